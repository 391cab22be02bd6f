"""Concept encyclopedia: concepts, activations of them, an interpreter that reads them back, lenses and monitoring."""
