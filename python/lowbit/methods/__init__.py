"""One file per quantization method; each registers itself with lowbit.registry."""
