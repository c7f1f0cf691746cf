"""Offline curation of a training set: what to train on, how often, and which labels to check.

One algorithm per module:

- ``repeat_factors``: LVIS class balancing by repeat factors (arXiv 1908.03195), with stochastic rounding.
- ``embeddings``: image embeddings from a trained detector's backbone (global-average-pooled FPN levels).
- ``dedup``: exact duplicates (hash of the decoded pixels) and near-duplicates (embedding distance).
- ``diversity``: k-center greedy core-set for a budget (Sener & Savarese, arXiv 1708.00489).
- ``manifest``: the versioned curation manifest read by training (``data.manifest``).
- ``label_quality``: likely label errors from out-of-sample predictions (missing, wrong class,
  badly placed, spurious boxes).

Nothing here rewrites a data set: the outcome of balancing is a manifest of per-image sampling weights.
"""
