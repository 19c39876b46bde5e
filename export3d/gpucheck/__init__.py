"""GPU acceptance check (``python -m export3d.gpucheck``) and the kernel configurations the presets launch."""
