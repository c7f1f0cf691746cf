"""Training-sample selection for the detectors' losses: plain functions on tensors.

- ``pisa``: PISA's Hierarchical Local Rank (IoU-HLR for positives, Score-HLR for negatives), the
  normalised ranks ``u`` that ``curation_core.losses.pisa`` turns into loss weights.
- ``libra``: Libra R-CNN's IoU-balanced negative and instance-balanced positive sampling.
"""
