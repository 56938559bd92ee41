"""Evaluation on top of the feature path (``byol_jax.features``); nothing here reads the config.

One module per evaluator, each a small object with ``run(encoder, variables) -> metrics``:
``probe`` (the online probe), ``knn``, ``linear`` (the paper's protocol, or features computed
once), ``fine_tune`` (label fractions), ``baselines`` (the table: encoder vs random init vs raw
pixels). ``logistic`` is the converged classifier the table scores every row with; ``registry``
builds evaluators from ``config.evals`` entries; ``base`` holds what they share.
"""
