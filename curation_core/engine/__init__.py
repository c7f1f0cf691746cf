"""The detector training engine: torchvision detectors trained from scratch on COCO data.

Modules, one concern each:

- ``config``: the training configuration (pydantic, YAML + ``key=value`` overrides).
- ``backbones``: small CPU backbones and ResNet, each with an FPN.
- ``models``: the detector factory (FCOS, RetinaNet, Faster R-CNN).
- ``data``: COCO torch data set, augmentations, collate, the resumable batch sampler.
- ``optim``: optimizer and learning-rate schedule.
- ``hooks``: the training-loop extension points.
- ``checkpoint``: saving and verified loading of checkpoints.
- ``trainer``: the training loop (``train``).
- ``predict``: loading a checkpoint for inference and evaluating it.

Nothing is imported here, so that ``import curation_core.engine.config`` stays cheap.
"""
