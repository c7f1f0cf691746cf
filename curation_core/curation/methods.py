"""``curation.method`` -> selector (a plain dict; unknown names list the valid ones)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from curation_core.curation.base import Selector
from curation_core.curation.detgain import DetGainSelector
from curation_core.curation.image_ap import ImageAPSelector
from curation_core.curation.loss import LossLearnabilitySelector, LossSelector
from curation_core.curation.uniform import UniformSelector

#: Method name -> factory(curation config). ``none`` (plain training) has no selector.
SELECTORS: dict[str, Callable[[Any], Selector]] = {
    "uniform": lambda config: UniformSelector(),
    "loss": lambda config: LossSelector(),
    "loss_learnability": lambda config: LossLearnabilitySelector(),
    "image_ap": lambda config: ImageAPSelector(),
    "detgain": lambda config: DetGainSelector(estimator=config.estimator, window=config.window, decay=config.decay),
}


def build_selector(config: Any) -> Selector:
    """The selector of a ``CurationConfig`` (``ValueError`` listing the valid methods otherwise)."""
    factory = SELECTORS.get(config.method)
    if factory is None:
        raise ValueError(f"build_selector(config.method=) expects one of {', '.join(SELECTORS)}; got {config.method!r}.")
    return factory(config)
