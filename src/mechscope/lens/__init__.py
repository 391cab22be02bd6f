"""Lenses: read what each layer predicts (the logit lens and the tuned lens), and the analyzer around them."""
