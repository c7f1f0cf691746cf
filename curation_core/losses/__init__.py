"""Detector losses beyond torchvision's batch-reduced ones.

- ``per_image``: ``score_forward`` (one no-grad forward giving unreduced per-image training losses and/or
  post-processed detections, for FCOS, RetinaNet and Faster R-CNN from ``build_detector``) and
  ``per_image_losses``; ``per_image_rcnn`` holds the Faster R-CNN half, ``batched_detections`` the
  FCOS / RetinaNet post-processing vectorised over a batch (torchvision's detections, fewer operations).
- ``brl``: the Background Recalibration Loss (arXiv 2002.05274) and its IoU split of the anchors.
- ``weights``: per-anchor weights and ignore marks from per-box flags (``ignore``, ``unverified``).
- ``pisa``: PISA's ISR weights and CARL (arXiv 1904.04821).

The detectors' loss code that uses them is ``curation_core.engine.one_stage`` (RetinaNet, FCOS) and
``curation_core.engine.two_stage`` (Faster R-CNN).
"""
