"""Names of the relations and metrics (relations.md §2–4), free of torch so the CLI can use them."""

FORWARD = ("fact", "fact_sym", "fact_sqrt", "nfa", "agop", "enfa",  # k×k, compared with WᵀW
           "fact_adamw")
BACKWARD = ("bfact", "bfact_sym", "bfact_sqrt", "bnfa", "bagop", "benfa")  # m×m, with WWᵀ
RELATIONS = FORWARD + BACKWARD  # every relation name
MATRICES = ("nfm", "bnfm", *RELATIONS)  # a result's matrices: the Gram matrices and relations
NEEDS_OPTIMIZER = frozenset({"fact_adamw"})  # AdamW's second moments v̂ (§7): only with its state
DEFAULT_RELATIONS = tuple(r for r in RELATIONS if r not in NEEDS_OPTIMIZER)  # W and the data alone
FACT_FAMILY = frozenset({"fact", "fact_sym", "fact_sqrt", "bfact", "bfact_sym", "bfact_sqrt"})
AGOP_FAMILY = frozenset({"nfa", "agop", "bnfa", "bagop"})  # need the output Jacobians
PER_USE = AGOP_FAMILY | {"enfa", "benfa"}  # need z and ∂/∂z of every use, not only ∇_W L
UNFACTORED = ("bnfa", "bagop", "benfa")  # from the m×m sums alone: no thin factors
METRIC_NAMES = ("pearson", "cosine", "rel_err")
