"""Storage: the one place that writes files.

Bottom level (no model, no torch at import): `atomic` writes any file all-or-nothing, `tensors` keeps
tensors with their metadata in one safetensors file, `tables` writes CSV / JSONL / Parquet by suffix.
"""
