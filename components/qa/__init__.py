"""Session-level synthetic questions (MemBuilder's dense reward data) and their quality gates."""
