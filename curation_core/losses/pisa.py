"""PISA's loss reweighting (Prime Sample Attention, Cao et al., arXiv 1904.04821): ISR and CARL.

- ``isr_weights``: Importance-based Sample Reweighting. A sample of normalised HLR rank ``u``
  (``curation_core.samplers.pisa``: u in (0, 1], 1 = most prime) gets the classification-loss weight

      w = ((1 - beta) * u + beta) ** gamma                                            (paper Eq. 3)

  then all weights are multiplied by one factor so that the weighted total loss equals the unweighted
  one, ``sum(w * L) = sum(L)``: ISR moves loss between samples, it does not change its scale. The
  paper's settings: gamma 2, beta 0 for positives (ISR-P, ``ISR_P_GAMMA``); gamma 0.5, beta 0 for
  negatives (ISR-N, ``ISR_N_GAMMA``). Weights are constants (no gradient).
- ``carl_weights`` / ``carl_loss``: Classification-Aware Regression Loss. Each positive's regression
  loss is scaled by

      c = (b + (1 - b) * p) ** k,   c <- c / mean(c)                                  (paper Eq. 5)

  with ``p`` the predicted probability of the sample's ground-truth class (softmax for Faster R-CNN,
  sigmoid for RetinaNet), k 1, b 0.2. The gradient flows into ``p``, so the classifier learns to score
  well-localised samples higher. As in the paper and mmdetection, CARL is a loss term added to the
  detector's regression loss, not a replacement.

NaN guards (mmdetection's CARL is reported to diverge on large batches and with IoU losses): the
weights and the reduction are computed in float32 whatever the input dtype (a sum of many fp16
weights overflows to inf, and inf / inf is NaN), ``p`` is clamped to [0, 1], the normalisation divides
by a mean clamped away from 0, and samples whose regression loss is not finite (IoU losses on
degenerate boxes, a diverged step) are left out of CARL (weight 0, not counted in the mean) instead
of making the whole loss NaN; ``torch.where`` passes them a zero gradient (an operation upstream
that divided by zero can still turn that zero into NaN: mask at the source where that can happen).
An empty set of positives gives a zero loss that is still part of the graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: ISR exponents and shifts of the paper: positives (ISR-P) and negatives (ISR-N).
ISR_P_GAMMA = 2.0
ISR_P_BETA = 0.0
ISR_N_GAMMA = 0.5
ISR_N_BETA = 0.0
#: CARL exponent and bias of the paper.
CARL_K = 1.0
CARL_BIAS = 0.2
#: Smallest mean weight / total loss divided by (guards a division by zero).
_EPS = 1e-12


def isr_weights(ranks: Tensor, losses: Tensor, *, gamma: float, beta: float = 0.0) -> Tensor:
    """ISR loss weights, rescaled so that ``sum(weights * losses) == sum(losses)``.

    Parameters
    ----------
    ranks : Tensor (n,), float
        Normalised HLR ranks ``u`` in [0, 1], 1 = most prime (``samplers.pisa.iou_hlr`` / ``score_hlr``).
    losses : Tensor (n,), float
        The samples' unweighted classification losses (>= 0); detached here.
    gamma : float >= 0
        Exponent (2 for positives, 0.5 for negatives in the paper). 0 gives weights 1.
    beta : float in [0, 1]
        Shift: the weight of the least prime sample before rescaling is ``beta ** gamma``.

    Returns
    -------
    Tensor (n,), float32, no gradient
        The weights. When the weighted total is 0 (every loss 0, or every weight 0) the total cannot be
        kept, and the raw weights are returned scaled to mean 1.

    Raises
    ------
    ValueError
        For ranks and losses of different shapes, ranks outside [0, 1], gamma < 0 or beta outside [0, 1].
    """
    if ranks.shape != losses.shape or ranks.dim() != 1:
        raise ValueError(f"isr_weights(ranks=, losses=) expect 1-D tensors of one shape; "
                         f"got {tuple(ranks.shape)} and {tuple(losses.shape)}.")
    if gamma < 0 or not 0.0 <= beta <= 1.0:
        raise ValueError(f"isr_weights(gamma=, beta=) expect gamma >= 0 and beta in [0, 1]; got {gamma}, {beta}.")
    if ranks.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=ranks.device)
    u = ranks.detach().float()
    if bool(((u < 0) | (u > 1)).any()):
        raise ValueError(f"isr_weights(ranks=) expects values in [0, 1]; got min {float(u.min())}, "
                         f"max {float(u.max())}.")
    loss = losses.detach().float()
    raw = ((1.0 - beta) * u + beta).pow(gamma)
    weighted = (raw * loss).sum()
    if not bool(weighted > _EPS) or not bool(torch.isfinite(weighted)):
        return raw / raw.mean().clamp_min(_EPS)
    return raw * (loss.sum() / weighted)


def carl_weights(probabilities: Tensor, *, k: float = CARL_K, bias: float = CARL_BIAS,
                 valid: Tensor | None = None) -> Tensor:
    """CARL weights ``(bias + (1 - bias) * p) ** k`` normalised to mean 1 over the valid samples.

    Parameters
    ----------
    probabilities : Tensor (n,), float
        Predicted probability of each positive's ground-truth class, with its gradient (the gradient
        of CARL reaches the classifier through it). Clamped to [0, 1].
    k : float > 0
        Exponent (1 in the paper).
    bias : float in [0, 1]
        Weight of a sample predicted with p = 0, before normalisation (0.2 in the paper).
    valid : Tensor (n,), bool, optional
        Samples that take part; the others get weight 0 and are not counted in the mean.

    Returns
    -------
    Tensor (n,), float32
        Weights with mean 1 over the valid samples (0 elsewhere); empty for empty input.
    """
    if probabilities.dim() != 1:
        raise ValueError(f"carl_weights(probabilities=) expects a 1-D tensor; got shape {tuple(probabilities.shape)}.")
    if k <= 0 or not 0.0 <= bias <= 1.0:
        raise ValueError(f"carl_weights(k=, bias=) expect k > 0 and bias in [0, 1]; got {k}, {bias}.")
    p = torch.nan_to_num(probabilities.float(), nan=0.0).clamp(0.0, 1.0)
    raw = (bias + (1.0 - bias) * p).pow(k)
    if valid is None:
        valid = torch.ones_like(p, dtype=torch.bool)
    raw = torch.where(valid, raw, torch.zeros_like(raw))
    count = valid.sum().clamp_min(1)
    mean = (raw.sum() / count).clamp_min(_EPS)
    return raw / mean


def carl_loss(probabilities: Tensor, regression_losses: Tensor, *, normalizer: float | Tensor,
              k: float = CARL_K, bias: float = CARL_BIAS) -> Tensor:
    """CARL: ``sum_i c_i * regression_losses_i / normalizer`` with ``c = carl_weights(probabilities)``.

    Parameters
    ----------
    probabilities : Tensor (n,), float
        Predicted probability of each positive's ground-truth class (gradient flows to the classifier).
    regression_losses : Tensor (n,), float
        Each positive's unreduced regression loss (summed over its 4 coordinates for smooth L1; one
        value per box for IoU losses), with its gradient. Non-finite entries are left out.
    normalizer : float or 0-d Tensor > 0
        What the detector divides its regression loss by (Faster R-CNN: the number of sampled
        proposals; RetinaNet: the number of positive anchors), so CARL is on the scale of that loss.
    k, bias : float
        See ``carl_weights``.

    Returns
    -------
    Tensor (), float32
        The loss; 0 (still in the graph) when there are no positives or none is finite.
    """
    if regression_losses.shape != probabilities.shape:
        raise ValueError(f"carl_loss(probabilities=, regression_losses=) expect one shape; "
                         f"got {tuple(probabilities.shape)} and {tuple(regression_losses.shape)}.")
    if float(normalizer) <= 0:
        raise ValueError(f"carl_loss(normalizer=) expects a value > 0; got {float(normalizer)}.")
    losses = regression_losses.float()
    finite = torch.isfinite(losses)
    weights = carl_weights(probabilities, k=k, bias=bias, valid=finite)
    safe = torch.where(finite, losses, torch.zeros_like(losses))
    return (weights * safe).sum() / normalizer
