"""The pipeline's datasets: dialogue ingestion behind the quality gate, and session-level synthetic QA."""
