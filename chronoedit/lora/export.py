"""Write LoRAs (``{our module name: LoRAWeights}``) in any of the schemes :mod:`chronoedit.lora.formats` reads.

``peft`` (the default) is the file diffusers' ``load_lora_weights`` and our ``read_lora`` both load: keys
``transformer.<diffusers module>.lora_A/lora_B.weight`` (+ ``lora_B.bias``) and the alphas in diffusers'
``lora_adapter_metadata`` (a PEFT LoraConfig: ``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.safetensors_io import save_file
from chronoedit.lora.formats import DIFFUSERS_MODULES, KOHYA_MODULES, PEFT_METADATA_KEY, SCHEMES, is_bare_parameter
from chronoedit.lora.weights import LoRAWeights

_OURS_TO_DIFFUSERS = DIFFUSERS_MODULES.inverse()
_OURS_TO_KOHYA = KOHYA_MODULES.inverse()


def _peft_metadata(modules: dict[str, LoRAWeights]) -> dict[str, str]:
    """diffusers' LoRA metadata for the transformer: the most common rank / alpha, patterns (on diffusers'
    module names, escaped: PEFT reads them as regular expressions) for the others."""
    named = {_OURS_TO_DIFFUSERS.map_key(m): w for m, w in modules.items() if w.rank}
    ranks = {m: w.rank for m, w in named.items()}
    alphas = {m: float(w.alpha if w.alpha is not None else w.rank) for m, w in named.items()}
    if not ranks:
        return {}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    cfg = {
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {re.escape(m): v for m, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(m): v for m, v in alphas.items() if v != alpha},
        "target_modules": sorted(ranks),
        "lora_bias": any(w.bias is not None for w in modules.values()),
        "use_dora": False,
        "use_rslora": False,
    }
    return {"format": "pt", PEFT_METADATA_KEY: json.dumps({f"transformer.{k}": v for k, v in cfg.items()})}


def lora_state_dict(loras: Mapping[str, LoRAWeights], scheme: str = "peft") -> tuple[dict[str, Tensor], dict]:
    """(tensors, safetensors metadata) of ``loras`` in ``scheme``; raises if the scheme cannot hold them."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown LoRA scheme {scheme!r}; known: {sorted(SCHEMES)}")
    out: dict[str, Tensor] = {}
    problems = []
    for module, w in loras.items():
        if w.down is not None and w.up is None:
            problems.append(f"{module}: down without up")
            continue
        if scheme == "peft":
            if is_bare_parameter(module):
                problems.append(f"{module}: a bare-parameter .diff (PEFT has no such tensor; use scheme='original')")
                continue
            name = "transformer." + _OURS_TO_DIFFUSERS.map_key(module)
            if w.diff is not None:
                problems.append(f"{module}: a full .diff delta (PEFT has no such tensor; use scheme='original')")
            if w.bias is not None and w.down is None:
                problems.append(f"{module}: a bias delta without lora_A/B (PEFT needs both; use scheme='original')")
            if w.down is not None:
                out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = w.down, w.up
            if w.bias is not None and w.down is not None:
                out[f"{name}.lora_B.bias"] = w.bias.float() / w.scale  # PEFT scales lora_B.bias by alpha/r
        elif scheme in ("original", "kohya"):
            name = (
                "diffusion_model." + module if scheme == "original" else "lora_unet_" + _OURS_TO_KOHYA.map_key(module)
            )
            if w.down is not None:
                out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = w.down, w.up
                if w.alpha is not None or scheme == "kohya":  # kohya readers want an alpha on every pair
                    out[f"{name}.alpha"] = torch.tensor(float(w.alpha if w.alpha is not None else w.rank))
            if w.bias is not None:
                out[f"{name}.diff_b"] = w.bias
            if w.diff is not None:
                out[f"{name}.diff"] = w.diff
        else:  # diffsynth: scale 1 by convention
            if w.diff is not None or w.bias is not None:
                problems.append(f"{module}: DiffSynth LoRAs hold lora_A/B only (no .diff / .diff_b)")
            if w.down is not None:
                up = w.up if w.scale == 1.0 else (w.up.float() * w.scale).to(w.up.dtype)
                out[f"{module}.lora_A.default.weight"], out[f"{module}.lora_B.default.weight"] = w.down, up
    if problems:
        raise CheckpointError(f"cannot write the LoRA in the {scheme} scheme: " + "; ".join(problems[:8]))
    metadata = _peft_metadata(dict(loras)) if scheme == "peft" else {"format": "pt"}
    return out, metadata


def save_lora(
    loras: Mapping[str, LoRAWeights],
    path: str | os.PathLike,
    scheme: str = "peft",
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``loras`` to a ``.safetensors`` file in ``scheme`` (tensors cast to ``dtype`` if given); returns
    the path. Alphas are kept (metadata for PEFT, ``.alpha`` tensors otherwise)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: LoRAs are written as .safetensors")
    tensors, metadata = lora_state_dict(loras, scheme)
    if dtype is not None:
        tensors = {k: v if v.ndim == 0 else v.to(dtype) for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata=metadata)
    return path


__all__ = ["lora_state_dict", "save_lora"]
