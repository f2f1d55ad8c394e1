"""LoRA files in the wild -> ``{our module name: LoRAWeights}``.

Four key schemes, each a declarative table (accepted key prefixes, a :class:`KeyMap` from the file's module
names to ours, and the tensor suffixes it uses):

    peft       transformer.blocks.0.attn1.to_q.lora_A.weight, .lora_B.weight (+ .lora_B.bias); alpha from the
               file's diffusers metadata (``lora_adapter_metadata``), else scale 1
    original   diffusion_model.blocks.0.self_attn.q.lora_down.weight, .lora_up.weight, .alpha, .diff_b, .diff
               (a ``.diff`` may also target a bare parameter: ``blocks.0.modulation.diff``, ``head.modulation.diff``)
    kohya      lora_unet_blocks_0_self_attn_q.lora_down.weight, .lora_up.weight, .alpha (kohya / musubi-tuner)
    diffsynth  blocks.0.self_attn.q.lora_A.default.weight, .lora_B.default.weight (scale 1)

The scheme is detected from the keys (the one that explains most of them); keys it does not explain are an
error naming them, or a warning with ``strict=False``.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from chronoedit.checkpoint.errors import CheckpointError, name_some
from chronoedit.checkpoint.keymap import KeyMap
from chronoedit.checkpoint.keymaps.dit import DIFFUSERS_TO_OURS
from chronoedit.lora.weights import LoRAWeights

PEFT_METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors metadata entry (a LoraConfig as JSON)


def _module_rules(keymap: KeyMap) -> list[tuple[str, str]]:
    """Module-level rules of a parameter key map: ``a.b.{p}`` / ``a.b.weight`` rules become ``a.b`` rules."""
    rules = []
    for src, dst in keymap.rules:
        for suffix in (".{p}", ".weight"):
            if src.endswith(suffix) and dst.endswith(suffix):
                rules.append((src.removesuffix(suffix), dst.removesuffix(suffix)))
                break
    return rules


_DIFFUSERS_RULES = _module_rules(DIFFUSERS_TO_OURS)
OUR_MODULES = [dst for _, dst in _DIFFUSERS_RULES]  # every module with a weight: linears, norms, patch embedding
# Bare parameters (no .weight / .bias): blocks.{n}.modulation, head.modulation. Original / kohya files may hold
# a full ``.diff`` for them (ComfyUI applies it); no low-rank pair can target them.
OUR_PARAMETERS = [dst for _, dst in DIFFUSERS_TO_OURS.rules if not dst.endswith((".{p}", ".weight", ".bias"))]

DIFFUSERS_MODULES = KeyMap(_DIFFUSERS_RULES)  # blocks.{n}.attn1.to_q -> blocks.{n}.self_attn.q
WAN_MODULES = KeyMap([(m, m) for m in OUR_MODULES])  # our names are Wan's
WAN_TARGETS = KeyMap([(m, m) for m in OUR_MODULES + OUR_PARAMETERS])  # + the bare parameters, for .diff
_BARE = KeyMap([(m, m) for m in OUR_PARAMETERS])
KOHYA_MODULES = KeyMap([(m.replace(".", "_"), m) for m in OUR_MODULES + OUR_PARAMETERS])  # blocks_{n}_self_attn_q

# What each tensor suffix is: down (r, in) · up (out, r) · alpha (scalar) · bias (a full bias delta) ·
# up_bias (PEFT lora_B.bias, scaled by alpha/rank like the product) · diff (a full weight delta).
_LORA_DOWN_UP = {"lora_down.weight": "down", "lora_up.weight": "up"}
_LORA_A_B = {"lora_A.weight": "down", "lora_B.weight": "up"}
_DEFAULT_A_B = {"lora_A.default.weight": "down", "lora_B.default.weight": "up"}
_FULL = {"alpha": "alpha", "diff": "diff", "diff_b": "bias"}


@dataclass(frozen=True)
class LoRAScheme:
    name: str
    prefixes: tuple[str, ...]  # accepted key prefixes; the first is the one written
    modules: KeyMap  # the file's module names (prefix stripped) -> ours
    suffixes: dict[str, str] = field(default_factory=dict)  # tensor suffix -> LoRAWeights field

    def split(self, key: str) -> tuple[str, str] | None:
        """(our module name, field) of ``key``, or None if this scheme does not explain it."""
        for prefix in self.prefixes:
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            for suffix, what in self.suffixes.items():
                if rest.endswith("." + suffix):
                    try:
                        module = self.modules.map_key(rest[: -len(suffix) - 1])
                    except KeyError:
                        continue
                    if module is not None:
                        return module, what
        return None


SCHEMES: dict[str, LoRAScheme] = {
    s.name: s
    for s in (
        LoRAScheme(
            "peft",
            ("transformer.", "", "base_model.model."),
            DIFFUSERS_MODULES,
            {**_LORA_A_B, "lora_B.bias": "up_bias", "alpha": "alpha"},
        ),
        LoRAScheme(
            "original",
            ("diffusion_model.", "model.diffusion_model."),
            WAN_TARGETS,
            {**_LORA_DOWN_UP, **_LORA_A_B, **_DEFAULT_A_B, **_FULL},
        ),
        LoRAScheme("kohya", ("lora_unet_",), KOHYA_MODULES, {**_LORA_DOWN_UP, **_FULL}),
        LoRAScheme("diffsynth", ("",), WAN_MODULES, {**_DEFAULT_A_B, **_LORA_A_B}),
    )
}


# ---------------------------------------------------------------------------------------------- reading files


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of a LoRA file: ``.safetensors``, or a pickle read with
    ``torch.load(weights_only=True)`` (anything but tensors in it is refused)."""
    from chronoedit.checkpoint.load import materialize, open_safetensors
    from chronoedit.checkpoint.pickle_io import load_pickled_tensors
    from chronoedit.checkpoint.safetensors_io import SafetensorsFile

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: LoRA file not found")
    if path.suffix == ".safetensors":
        infos = open_safetensors(path)
        return {k: materialize(v) for k, v in infos.items()}, SafetensorsFile(path).metadata
    return load_pickled_tensors(path), {}


def _peft_config(metadata: Mapping[str, str] | None, where: str) -> dict:
    """The transformer's LoraConfig fields from diffusers' metadata (``transformer.lora_alpha`` …), or {}."""
    raw = (metadata or {}).get(PEFT_METADATA_KEY)
    if not raw:
        return {}
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: corrupt {PEFT_METADATA_KEY} metadata ({e})") from e
    prefixed = {k.removeprefix("transformer."): v for k, v in cfg.items() if k.startswith("transformer.")}
    return prefixed or cfg


def _pattern_value(patterns: Mapping[str, float], module: str, default: float | None) -> float | None:
    """PEFT's rule: the first pattern ``p`` with ``(.*\\.)?(p)$`` matching the module name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _peft_alpha(cfg: Mapping, diffusers_module: str, rank: int) -> float | None:
    if not cfg:
        return None
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, diffusers_module, cfg.get("lora_alpha"))
    if alpha is None:
        return None
    if cfg.get("use_rslora"):
        return float(alpha) * math.sqrt(rank)  # PEFT scales by alpha/√r; LoRAWeights by alpha/r
    return float(alpha)


# ---------------------------------------------------------------------------------------------- parsing


def is_bare_parameter(name: str) -> bool:
    """True for a LoRA target that is a parameter of the DiT (``blocks.3.modulation``), not a layer."""
    try:
        return _BARE.map_key(name) is not None
    except KeyError:
        return False


def detect_scheme(keys: list[str]) -> tuple[LoRAScheme, list[str]]:
    """The scheme explaining most ``keys``, and the keys it does not explain."""
    best, best_known = None, -1
    for scheme in SCHEMES.values():
        known = sum(scheme.split(k) is not None for k in keys)
        if known > best_known:
            best, best_known = scheme, known
    if best_known <= 0:
        raise CheckpointError(f"no LoRA scheme (peft, original, kohya, diffsynth) knows these keys: {name_some(keys)}")
    return best, [k for k in keys if best.split(k) is None]


def parse_lora(
    state: Mapping[str, Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    strict: bool = True,
    where: str = "LoRA",
) -> tuple[dict[str, LoRAWeights], str]:
    """``state`` (a LoRA state dict in any known scheme) as LoRAWeights per our module name, and the scheme."""
    scheme, unknown = detect_scheme(list(state))
    if unknown:
        msg = f"{where}: {len(unknown)} keys the {scheme.name} LoRA scheme does not know: {name_some(unknown)}"
        if strict:
            raise CheckpointError(msg)
        warnings.warn(msg + " (ignored)", stacklevel=3)
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        hit = scheme.split(key)
        if hit is None:
            continue
        module, what = hit
        if what in parts.setdefault(module, {}):
            raise CheckpointError(f"{where}: two keys give {module} its {what} (e.g. {key})")
        parts[module][what] = value
    peft_cfg = _peft_config(metadata, where) if scheme.name == "peft" else {}
    if peft_cfg.get("use_dora"):
        raise CheckpointError(f"{where}: DoRA LoRAs (use_dora) are not supported")
    to_diffusers = DIFFUSERS_MODULES.inverse()  # PEFT alpha patterns name diffusers modules
    out: dict[str, LoRAWeights] = {}
    problems = []
    for module, p in parts.items():
        down, up = p.get("down"), p.get("up")
        if (down is None) != (up is None):
            problems.append(f"{module}: {'lora_down/A' if down is None else 'lora_up/B'} missing")
            continue
        if down is None and ("alpha" in p or "up_bias" in p):
            problems.append(f"{module}: alpha or lora_B.bias without lora_A/lora_B")
            continue
        if is_bare_parameter(module) and set(p) != {"diff"}:
            problems.append(f"{module}: a bare parameter takes a full .diff only, not {sorted(set(p) - {'diff'})}")
            continue
        rank = 0 if down is None else down.shape[0]
        alpha = float(p["alpha"].float().item()) if "alpha" in p else None
        if alpha is None and scheme.name == "peft" and rank:
            alpha = _peft_alpha(peft_cfg, to_diffusers.map_key(module), rank)
        w = LoRAWeights(down=down, up=up, alpha=alpha, bias=p.get("bias"), diff=p.get("diff"))
        if "up_bias" in p:  # PEFT adds lora_B.bias scaled like the product: a full delta of scale × bias
            w.bias = p["up_bias"].float() * w.scale
        out[module] = w
    if problems:
        raise CheckpointError(f"{where}: incomplete LoRA modules: {name_some(problems, 8)}")
    return out, scheme.name


def read_lora(
    source: str | os.PathLike | Mapping[str, Tensor],
    *,
    strict: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> tuple[dict[str, LoRAWeights], str]:
    """Read a LoRA (a file path or a state dict) into ``({our module name: LoRAWeights}, scheme)``.

    ``scheme`` is one of ``peft``, ``original``, ``kohya``, ``diffsynth``. Unknown keys raise a CheckpointError
    listing them (a warning with ``strict=False``); a module with only half of its pair is always an error.
    """
    if isinstance(source, Mapping):
        return parse_lora(source, metadata=metadata, strict=strict)
    tensors, file_metadata = read_lora_file(source)
    return parse_lora(tensors, metadata=metadata or file_metadata, strict=strict, where=str(source))


__all__ = [
    "OUR_MODULES",
    "OUR_PARAMETERS",
    "SCHEMES",
    "LoRAScheme",
    "detect_scheme",
    "is_bare_parameter",
    "parse_lora",
    "read_lora",
    "read_lora_file",
]
