"""One module per DVC stage: a pure, typed function plus the thin entry the CLI calls."""
