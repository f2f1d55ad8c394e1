"""Install with `pip install -e .` (torch==2.13.0 first, see README)."""

from setuptools import find_packages, setup

RUNTIME = [
    "torch==2.13.0",
    "einops>=0.8",
    "safetensors>=0.4",
    "huggingface_hub>=0.30",
    "sentencepiece>=0.2",
    "tokenizers>=0.20",
    "numpy>=1.26",
    "pillow>=10.0",
    "hydra-core>=1.3",
    "pyyaml>=6",  # comes with hydra-core; used directly for the native format and config.yaml
    "tqdm>=4",  # comes with huggingface_hub
]

EXTRAS = {
    # The reference implementations are oracles for the tests only; chronoedit/ never imports them.
    # ftfy: diffusers' ChronoEditPipeline cannot clean a prompt without it (our cleaning uses it when present).
    # gguf: the GGUF DiT tests (skipped without it)
    "test": ["pytest>=8", "diffusers==0.42.1", "transformers==5.23.0", "peft>=0.17", "ftfy>=6", "regex", "gguf>=0.19"],
    "dev": ["ruff>=0.6"],
    "video": ["imageio>=2.30", "imageio-ffmpeg>=0.5"],
    "text": ["ftfy>=6"],
    "plot": ["matplotlib>=3.7"],  # infer/eval.py sweeps: sweep.png (the table is written without it)
    "gguf": ["gguf>=0.19"],  # GGUF DiTs (QuantStack's ChronoEdit quantisations), dequantised on load
}

setup(
    name="chronoedit",
    version="0.1.0",
    description="ChronoEdit (image editing by video generation) in plain PyTorch",
    python_requires=">=3.10",
    packages=find_packages(include=["chronoedit", "chronoedit.*"]),
    include_package_data=True,
    package_data={"chronoedit": ["assets/*", "assets/*/*", "assets/*/*/*"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
)
