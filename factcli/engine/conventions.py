"""Names of the relations and metrics (relations.md §2–4), free of torch so the CLI can use them."""

FORWARD = ("fact", "fact_sym", "fact_sqrt", "nfa", "agop", "enfa")     # k×k, compared with WᵀW
BACKWARD = ("bfact", "bfact_sym", "bfact_sqrt", "bnfa", "bagop", "benfa")  # m×m, with WWᵀ
RELATIONS = FORWARD + BACKWARD
FACT_FAMILY = frozenset({"fact", "fact_sym", "fact_sqrt", "bfact", "bfact_sym", "bfact_sqrt"})
AGOP_FAMILY = frozenset({"nfa", "agop", "bnfa", "bagop"})  # need the output Jacobians
PER_USE = AGOP_FAMILY | {"enfa", "benfa"}  # need z and ∂/∂z of every use, not only ∇_W L
METRIC_NAMES = ("pearson", "cosine", "rel_err")
