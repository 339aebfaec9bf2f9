"""Reference training to convergence: the loop, the objective, the polish."""
