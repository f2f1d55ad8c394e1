"""The Wan 2.1 causal video VAE (8× spatial, 4× temporal compression, 16 latent channels)."""

from chronoedit.models.vae.cache import CausalCache
from chronoedit.models.vae.config import VAE_PRESETS, VAEConfig
from chronoedit.models.vae.model import Decoder, Encoder, WanVAE
from chronoedit.models.vae.tiling import VAETiling

__all__ = ["VAE_PRESETS", "CausalCache", "Decoder", "Encoder", "VAEConfig", "VAETiling", "WanVAE"]
