"""Detector losses beyond torchvision's batch-reduced ones.

- ``per_image``: ``score_forward`` (one no-grad forward giving unreduced per-image training losses and/or
  post-processed detections, for FCOS, RetinaNet and Faster R-CNN from ``build_detector``) and
  ``per_image_losses``; ``per_image_rcnn`` holds the Faster R-CNN half.
"""
