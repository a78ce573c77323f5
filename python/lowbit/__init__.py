"""lowbit: low-bit post-training quantization for PyTorch."""
