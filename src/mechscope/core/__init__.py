"""Core: sites, hooks, capture and intervention on a model's own modules."""
