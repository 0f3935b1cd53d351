"""memforge components: reusable, typed parts that the DVC stages and Prefect flows call."""

__version__ = "0.1.0"
