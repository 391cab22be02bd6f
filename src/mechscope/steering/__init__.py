"""Activation steering: directions from contrast sets, steered generation, sweeps and evaluation."""
