"""Evaluation on top of the feature path (``byol_jax.features``); nothing here reads the config.

``logistic``: the converged, L2-selected logistic regression that scores every baselines row.
"""
