"""Multi-stage pipelines: DAGs of training jobs and built-in steps."""
