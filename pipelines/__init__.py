"""Orchestration: the command-line front end, DVC stages, and (later) the Kubeflow pipeline and the
Airflow DAG. ``pipelines.tracking`` is the only module that talks to MLflow."""
