"""DetGain: the marginal contribution of an image to dataset-level mAP, and selection by learnability.

Sun et al., "Online Data Curation for Object Detection via Marginal Contributions to Dataset-level
Average Precision", arXiv 2511.14197.

- ``scoring``: ``detgain`` / ``learnability`` (online, against a ``DetGainState``) and their
  leave-one-out forms over one evaluated set; ``estimator=`` ``"exact"``, ``"uniform"`` or ``"empirical"``.
- ``state``: ``DetGainState`` / ``StateConfig``, running statistics per model (FIFO window, decay, npz).
- ``exact``, ``uniform``, ``empirical``: one estimator each; ``interpolation``: pycocotools' 101-point AP
  of many true-positive sequences; ``aggregate``: per-image mAP changes; ``records``: inputs.
- ``selection``: keep b of B images, top-b or softmax sampling.
"""

from curation_core.detgain.scoring import (
    ESTIMATORS,
    Learnability,
    detgain,
    learnability,
    leave_one_out_detgain,
    leave_one_out_learnability,
)
from curation_core.detgain.selection import Selection, select_batch, select_sampled, select_top
from curation_core.detgain.state import DetGainState, StateConfig
from curation_core.detgain.uniform import uniform_fp_gain, uniform_tp_gain

__all__ = [
    "ESTIMATORS",
    "DetGainState",
    "Learnability",
    "Selection",
    "StateConfig",
    "detgain",
    "learnability",
    "leave_one_out_detgain",
    "leave_one_out_learnability",
    "select_batch",
    "select_sampled",
    "select_top",
    "uniform_fp_gain",
    "uniform_tp_gain",
]
