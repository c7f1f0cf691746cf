"""DetCurate core library: data model, evaluation, DetGain and the training engine.

This package never imports the orchestration layer (``components``, ``pipelines``, mlflow, dvc,
kfp, airflow); it takes plain arguments and returns numbers.
"""

__version__ = "0.1.0"
