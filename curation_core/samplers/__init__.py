"""Training-sample selection for the detectors' losses: plain functions on tensors.

- ``ignore``: ignore regions (annotations flagged ``ignore=1``): which anchors/proposals lie inside
  them, with pycocotools' crowd measure, so that they are neither foreground nor background.
- ``libra``: Libra R-CNN's IoU-balanced negative and instance-balanced positive sampling
  (arXiv 1904.02701).
- ``pisa``: PISA's Hierarchical Local Rank (IoU-HLR for positives, Score-HLR for negatives), the
  normalised ranks ``u`` that ``curation_core.losses.pisa`` turns into loss weights (arXiv 1904.04821).
"""
