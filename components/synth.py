"""Pipeline step: write the synthetic COCO detection data set (train and val splits) to a folder.

One call into ``curation_core.synth.generate_dataset``. Output: OUT/train/images/*.png,
OUT/val/images/*.png, OUT/{train,val}/annotations.json and OUT/synth.json (parameters and counts),
identical byte for byte for the same arguments. Running it again on a partly written folder resumes.
"""

from __future__ import annotations

import os
from typing import Any

from curation_core.progress import ProgressFn
from curation_core.synth import SynthConfig, generate_dataset


def synthesize(
    out_dir: str | os.PathLike[str],
    *,
    train: int,
    val: int,
    size: int,
    seed: int,
    imbalance: float,
    max_objects: int = 20,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write the data set to ``out_dir``; return the content of synth.json plus this run's file counts.

    Parameters
    ----------
    train, val : number of images per split (>= 1).
    size : side of the square images in pixels (32 to 4096).
    seed : non-negative seed; every image depends on (seed, split, index) only.
    imbalance : most / least frequent class ratio R >= 1 (class k has weight R ** (-k / (K - 1))).
    max_objects : most annotated objects per image.

    Raises
    ------
    ConfigError
        A parameter is out of range (nothing is written).
    """
    config = SynthConfig(train=train, val=val, size=size, seed=seed, imbalance=imbalance, max_objects=max_objects)
    return generate_dataset(out_dir, config, progress=progress)
