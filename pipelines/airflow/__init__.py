"""The Airflow form of the pipeline: ``detcurate_dag.py`` (the DAG folder's only DAG file) and
``local_run`` (``dag.test()`` with a temporary metadata database, for ``detcurate pipeline run``)."""
