"""Causal tools: ablation sweeps, activation and attribution patching, circuit graphs."""
