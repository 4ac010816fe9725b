"""dm_pipeline: an incremental, crash-safe DM-history warehouse on Dagster."""

__version__ = "0.1.0"
