"""Causal tools: activation patching (ablation sweeps, attribution patching and circuit export to come)."""
