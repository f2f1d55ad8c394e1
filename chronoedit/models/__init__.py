"""The networks: the video DiT, the causal VAE, the UMT5 text encoder and the CLIP vision tower."""
