"""The Kubeflow Pipelines (kfp 2.17) form of the pipeline: ``graph`` builds it, ``runner`` compiles,
runs it locally (``kfp.local``) or submits it to a Kubeflow host.

This package is ``pipelines.kfp``; it imports the ``kfp`` distribution by its absolute name. Never add a
top-level module or folder named ``kfp`` to the project: it would shadow the package (kfp issue 11418).
"""
