"""Background Recalibration Loss (BRL) for one-stage detectors trained on partly annotated data.

Zhang, Chen, Shen, Hao, Zhu and Savvides, "Solving Missing-Annotation Object Detection with Background
Recalibration Loss", ICASSP 2020, arXiv 2002.05274 (code: github.com/Dwrety/mmdetection-selective-iou).

Objects left unannotated are trained as background: an anchor on such an object is a negative whose
score the detector rightly pushes up, and the focal loss punishes it hardest exactly there. BRL splits
the anchors by their largest IoU with the annotated boxes (``assign_anchors``):

- positives: IoU >= ``pos_iou`` (0.5), plus each box's best anchors (RetinaNet's low-quality matches);
- ignored: IoU in [``neg_iou``, ``pos_iou``) = [0.4, 0.5): no classification loss;
- negatives: IoU in [``confusion_iou``, ``neg_iou``) = [0.1, 0.4): ordinary focal-loss negatives;
- confusion anchors: IoU < ``confusion_iou`` (0.1): far from every annotation, where a missed object
  can hide. An image without annotations has only confusion anchors.

With ``p = sigmoid(x)`` the predicted probability of a class and ``p_t = 1 - p`` (the probability of
the true label, background, on a negative), the focal loss (Lin et al., arXiv 1708.02002) of a
negative is ``FL(p_t) = -(1 - alpha) (1 - p_t)^gamma log(p_t)``. On confusion anchors BRL is

    BRL(p_t) = -(1 - alpha) (1 - p_t)^gamma log(p_t)      if p_t >= t     (p <= 1 - t: the focal loss)
               -(1 - alpha) p_t^gamma log(1 - p_t)         if p_t <  t     (p >  1 - t: mirrored)

that is, where the detector is confident (``p > 1 - t``) that a confusion anchor holds an object, the
negative branch is replaced by the mirror of the positive branch ``-alpha_t (1 - p)^gamma log(p)``
(with the negative's ``alpha_t = 1 - alpha``): its loss now falls as ``p`` rises, so the detector is no
longer pushed to suppress a probable missed object. The confusion anchors' loss is scaled by
``weight`` (0.1, the paper's best; the authors' ``loss_weight=0.1`` on their mirror loss) and
normalised like the focal loss, by the number of positive anchors. The paper uses ``t = 0.5``.
``t = 0`` never mirrors, so with ``weight = 1`` BRL is the focal loss exactly; with ``weight = w`` it
is the focal loss with the confusion anchors' terms scaled by ``w``. Where ``p_t == t`` exactly the
focal branch is used (as in the authors' kernel, ``(1 - p) >= thresh``).

Both branches are torchvision's ``sigmoid_focal_loss``: the mirrored one is the focal loss of target 1
with ``alpha`` set to ``1 - alpha``, so the code inherits its numerically stable log-sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection._utils import Matcher
from torchvision.ops import sigmoid_focal_loss

#: Focal-loss constants of RetinaNet (torchvision's defaults).
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
#: Anchor classes returned by ``assign_anchors`` besides box indices >= 0: torchvision's Matcher
#: codes for negatives and ignored anchors, and one for confusion anchors.
NEGATIVE = Matcher.BELOW_LOW_THRESHOLD  # -1
IGNORED = Matcher.BETWEEN_THRESHOLDS  # -2
CONFUSION = -3


@dataclass(frozen=True)
class BRLParams:
    """BRL settings (``model.brl`` in the training config). See the module docstring.

    Attributes
    ----------
    t : float in [0, 1]
        Confusion threshold: on confusion anchors, probabilities ``p > 1 - t`` take the mirrored branch.
    weight : float >= 0
        Weight of the confusion anchors' loss.
    pos_iou, neg_iou, confusion_iou : float
        IoU thresholds, ``0 <= confusion_iou <= neg_iou <= pos_iou <= 1``, ``pos_iou > 0``.
    """

    t: float = 0.5
    weight: float = 0.1
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    confusion_iou: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.t <= 1.0:
            raise ValueError(f"BRLParams(t=) expects a value in [0, 1]; got {self.t}.")
        if not self.weight >= 0.0:
            raise ValueError(f"BRLParams(weight=) expects a value >= 0; got {self.weight}.")
        if not (0.0 <= self.confusion_iou <= self.neg_iou <= self.pos_iou <= 1.0 and self.pos_iou > 0.0):
            raise ValueError(f"BRLParams(confusion_iou=, neg_iou=, pos_iou=) expects 0 <= confusion_iou <= neg_iou "
                             f"<= pos_iou <= 1, pos_iou > 0; got {self.confusion_iou}, {self.neg_iou}, {self.pos_iou}.")


def assign_anchors(iou: Tensor, *, pos_iou: float, neg_iou: float, confusion_iou: float,
                   num_anchors: int | None = None) -> Tensor:
    """BRL's anchor classes from the IoU matrix of one image.

    Parameters
    ----------
    iou : Tensor (M, A), float
        IoU of the M annotated boxes (ignored ones included) with the A anchors, both xyxy in the same
        pixels (``torchvision.ops.box_iou(boxes, anchors)``). M may be 0 (then give ``num_anchors``).
    pos_iou, neg_iou, confusion_iou : float
        Thresholds as in ``BRLParams``.
    num_anchors : int, optional
        A; needed only when M = 0 (an (0, A) matrix carries it too).

    Returns
    -------
    Tensor (A,), int64
        The matched box index (>= 0) for positives (torchvision's ``Matcher(pos_iou, neg_iou,
        allow_low_quality_matches=True)``, as RetinaNet), ``IGNORED`` (-2), ``NEGATIVE`` (-1) or
        ``CONFUSION`` (-3, largest IoU < ``confusion_iou``, never a low-quality match). An image
        without boxes has only confusion anchors (if ``confusion_iou > 0``; else only negatives).
    """
    if iou.dim() != 2:
        raise ValueError(f"assign_anchors(iou=) expects a (M, A) matrix; got shape {tuple(iou.shape)}.")
    count = iou.shape[1] if num_anchors is None else num_anchors
    if iou.shape[0] == 0:  # no annotation: every anchor is at IoU 0 from all of them
        code = CONFUSION if confusion_iou > 0 else NEGATIVE
        return torch.full((count,), code, dtype=torch.int64, device=iou.device)
    matched = Matcher(pos_iou, neg_iou, allow_low_quality_matches=True)(iou)
    confusion = (matched == NEGATIVE) & (iou.max(dim=0).values < confusion_iou)
    return torch.where(confusion, torch.full_like(matched, CONFUSION), matched)


def recalibrated_negative_loss(logits: Tensor, *, t: float, alpha: float = FOCAL_ALPHA,
                               gamma: float = FOCAL_GAMMA) -> Tensor:
    """BRL of background targets, elementwise: the focal loss where ``p <= 1 - t``, mirrored above.

    Parameters
    ----------
    logits : Tensor (..., K), float
        Class logits of confusion anchors (their target is background for every class).
    t : float in [0, 1]
        Confusion threshold (0: the focal loss of target 0 everywhere).
    alpha, gamma : float
        Focal-loss constants.

    Returns
    -------
    Tensor of the shape of ``logits``, >= 0, unweighted (``weight`` is applied by the caller).
    """
    negative = sigmoid_focal_loss(logits, torch.zeros_like(logits), alpha=alpha, gamma=gamma)
    return _mirror(negative, logits, torch.ones_like(logits, dtype=torch.bool), t=t, scale=1.0, alpha=alpha,
                   gamma=gamma)


def background_recalibration_loss(logits: Tensor, targets: Tensor, confusion: Tensor, *, t: float, weight: float,
                                  alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Elementwise BRL: the focal loss, and on confusion rows ``weight`` x the recalibrated loss.

    Parameters
    ----------
    logits : Tensor (A, K), float
        Class logits of A anchors (ignored anchors already left out).
    targets : Tensor (A, K), float
        One-hot class targets (1 for a positive's class, 0 elsewhere).
    confusion : Tensor (A,), bool
        Confusion anchors (``assign_anchors(...) == CONFUSION``); their targets must be all 0.
    t, weight : float
        Confusion threshold and weight (``BRLParams``).
    alpha, gamma : float
        Focal-loss constants.

    Returns
    -------
    Tensor (A, K), >= 0
        Unreduced losses: sum them and divide by the number of positives (RetinaNet's normalisation).
    """
    if logits.shape != targets.shape or logits.dim() != 2 or confusion.shape != logits.shape[:1]:
        raise ValueError(f"background_recalibration_loss(logits=, targets=, confusion=) expects shapes (A, K), "
                         f"(A, K), (A,); got {tuple(logits.shape)}, {tuple(targets.shape)}, {tuple(confusion.shape)}.")
    if bool((targets[confusion] != 0).any()):
        row = int(torch.where(confusion & (targets != 0).any(dim=1))[0][0])
        raise ValueError(f"background_recalibration_loss(confusion=) marks anchor {row}, which has a positive target; "
                         f"confusion anchors are background.")
    # On confusion rows (all targets 0) the focal loss is the negative branch: scale it by the weight,
    # then replace the elements above 1 - t by the mirrored branch (computed there only: few elements).
    focal = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    scale = torch.ones(confusion.shape, dtype=focal.dtype, device=focal.device).masked_fill(confusion, weight)
    return _mirror(focal * scale[:, None], logits, confusion[:, None].expand_as(logits), t=t, scale=weight,
                   alpha=alpha, gamma=gamma)


def _mirror(loss: Tensor, logits: Tensor, rows: Tensor, *, t: float, scale: float, alpha: float,
            gamma: float) -> Tensor:
    """``loss`` with ``scale`` x the mirrored branch where ``rows`` and ``sigmoid(logits) > 1 - t``."""
    if t <= 0.0:  # never mirrored: the input as it is (so t = 0 is the focal loss exactly)
        return loss
    mirror = rows & (torch.sigmoid(logits) > 1.0 - t)
    if not bool(mirror.any()):
        return loss
    picked = logits[mirror]
    mirrored = sigmoid_focal_loss(picked, torch.ones_like(picked), alpha=1.0 - alpha, gamma=gamma)
    out = loss.clone()
    out[mirror] = scale * mirrored
    return out
