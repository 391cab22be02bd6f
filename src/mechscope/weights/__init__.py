"""Weight analysis on checkpoint files, never on a loaded model.

Tensors stream one at a time from safetensors (single or sharded), PyTorch ``.bin``, GGUF or ``.npz``;
statistics, rank and spectra are computed per tensor, base and fine-tuned checkpoints are compared, and
direction vectors are pushed through the attention and MLP weights.
"""
