"""Lenses: read what each layer predicts (logit lens; tuned lens later)."""
