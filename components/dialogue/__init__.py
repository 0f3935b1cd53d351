"""Dialogue data: the normalised conversation schema, loaders, the synthetic generator and quality checks."""
