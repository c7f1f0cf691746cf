"""The missing-label robustness grid (the Background Recalibration Loss paper's protocol, arXiv 2002.05274).

For each training set (``normal`` and the corrupted ``easy``, ``hard``, ``extreme`` and
``drop-per-category`` sets of ``curation_core.corrupt``), each one-stage loss (``focal``, ``brl``), each
curation method and each seed, train a detector with the engine and evaluate it on the clean validation
set (pycocotools AP, AP50, AP75); aggregate over seeds into a JSON file, a Markdown table and a figure.

- ``config``: the YAML configuration, the cell list and each cell's training config.
- ``runner``: the corrupted training sets and the resumable loop over the cells (imports torch, so it is
  not imported here: ``from curation_core.robustness.runner import run_robustness``).
- ``report``: mean / sd / se over seeds, paired BRL - focal differences, the table and the figure.
"""

from curation_core.robustness.config import Cell, RobustnessConfig, cell_list, load_robustness_config
from curation_core.robustness.report import aggregate, markdown_report, mean_sd_se, paired_differences

__all__ = ["Cell", "RobustnessConfig", "aggregate", "cell_list", "load_robustness_config", "markdown_report",
           "mean_sd_se", "paired_differences"]
