"""Checks that mechscope is exact on a model (`mechscope doctor`)."""
