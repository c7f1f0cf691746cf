"""Pipeline steps: one module per step, typed inputs and outputs, one call into ``curation_core``.

Each step is usable from the command line, DVC stages, Kubeflow components and Airflow tasks alike.
This package never imports the orchestration tools or ``pipelines``.
"""
