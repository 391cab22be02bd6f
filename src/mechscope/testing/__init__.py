"""Helpers for tests: tiny random-init Hugging Face models built offline."""
