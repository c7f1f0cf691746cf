"""Box-level active learning with a simulated annotator (Desai & Balasubramanian, CVPRW 2020).

- ``pool``: the unlabelled box pool, a detector's high-recall predictions;
- ``measures``: informativeness of boxes (random, uncertainty, core-set, DetGain learnability) and of
  images (the baselines);
- ``annotator``: the simulated annotator (snap to the ground truth at IoU >= 0.5, else background);
- ``loop``: the rounds (initial detector, query, annotate, noisy labels, retrain), resumable;
- ``config``: the validated YAML configuration of a run.
"""
