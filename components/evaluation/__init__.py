"""Evaluation reports: per-question rows in, tables, DVC plot files and figures out."""
