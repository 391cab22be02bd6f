"""Attention analysis: patterns, entropy, focus, sinks and head roles."""
