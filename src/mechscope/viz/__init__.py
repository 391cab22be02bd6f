"""Self-contained HTML reports built from result objects (never from a model)."""
