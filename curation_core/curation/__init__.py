"""Online data curation: every training step scores a super-batch of B images and keeps the b best.

Sun et al., "Online Data Curation for Object Detection via Marginal Contributions to Dataset-level
Average Precision", arXiv 2511.14197, and the baselines it compares with.

- ``base``: ``ScoredBatch`` (what the models said about a super-batch), ``Selector`` (one method: scores,
  state) and ``Needs`` (which forward passes a method needs).
- one module per method: ``uniform``, ``loss`` (``loss`` and ``loss_learnability``), ``image_ap``, ``detgain``;
  ``methods.build_selector`` maps ``curation.method`` to one.
- ``curator``: ``OnlineCurator``, the trainer's batch selector: runs the teacher and the student on the
  super-batch (no gradients), scores, applies the rule (top-b or sampled), keeps the state.
- ``distributed``: gather of per-rank scores and states, and the global top-b.

The engine never imports this package: the trainer receives an ``OnlineCurator`` built by
``curation_core.curation.curator.build_curator`` as its ``BatchSelector``, and writes the selection log
(``curation_core.engine.selection_log``, ``selections.csv``) itself.
"""
