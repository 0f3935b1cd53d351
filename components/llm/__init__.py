"""Model assets and generation backends."""
