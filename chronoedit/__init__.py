"""ChronoEdit in plain PyTorch: image editing by video generation.

Layers, bottom to top: ``ops`` (attention, RoPE, norms) → ``models`` (DiT, VAE, UMT5, CLIP) →
``sampling`` (schedules, solvers, guidance) → ``checkpoint`` (formats, key maps, LoRA) →
``pipeline`` (the edit) and ``training``.
"""

__version__ = "0.1.0"
