"""dsrflow: data-subject requests answered by Prefect flows, proven and deadline-tracked."""

__version__ = "0.1.0"
