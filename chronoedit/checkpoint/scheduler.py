"""A checkpoint's ``scheduler/scheduler_config.json`` as the defaults of our sampler.

Only settings our samplers reproduce are accepted; any other value (a different sigma family, thresholding,
dynamic shifting, …) is an error naming the key, not silently ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from chronoedit.checkpoint.errors import CheckpointError

CONFIG_NAME = "scheduler_config.json"

# (key, value our samplers implement, diffusers' default when the key is absent)
_UNIPC_REQUIRED = [
    ("prediction_type", "flow_prediction", "epsilon"),
    ("use_flow_sigmas", True, False),
    ("predict_x0", True, True),
    ("final_sigmas_type", "zero", "zero"),
    ("thresholding", False, False),
    ("use_karras_sigmas", False, False),
    ("use_exponential_sigmas", False, False),
    ("use_beta_sigmas", False, False),
    ("use_dynamic_shifting", False, False),
    ("disable_corrector", [], []),
    ("solver_p", None, None),
]
_EULER_REQUIRED = [
    ("use_dynamic_shifting", False, False),
    ("invert_sigmas", False, False),
    ("shift_terminal", None, None),
    ("use_karras_sigmas", False, False),
    ("use_exponential_sigmas", False, False),
    ("use_beta_sigmas", False, False),
    ("stochastic_sampling", False, False),
]


def find_config(path: str | os.PathLike) -> Path:
    """``scheduler_config.json`` given the file, its folder, or a pipeline / native folder holding scheduler/."""
    path = Path(path)
    for candidate in (path, path / CONFIG_NAME, path / "scheduler" / CONFIG_NAME):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{path}: no {CONFIG_NAME} (looked in the folder and in scheduler/)")


def _check(config: dict[str, Any], required: list[tuple[str, Any, Any]], where: Path) -> None:
    bad = [f"{k}={config.get(k, d)!r} (need {v!r})" for k, v, d in required if config.get(k, d) != v]
    if bad:
        raise CheckpointError(f"{where}: scheduler settings our sampler does not implement: {', '.join(bad)}")


def sampler_defaults(path: str | os.PathLike) -> dict[str, Any]:
    """``SamplerConfig`` fields from a diffusers scheduler config: for UniPC ``name, shift, order,
    solver_type, lower_order_final, num_train_timesteps``; for flow-matching Euler ``name, shift,
    num_train_timesteps``."""
    where = find_config(path)
    try:
        config = json.loads(where.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: cannot read ({e})") from e
    cls = config.get("_class_name")
    steps = int(config.get("num_train_timesteps", 1000))
    if cls == "UniPCMultistepScheduler":
        _check(config, _UNIPC_REQUIRED, where)
        return dict(
            name="unipc",
            shift=float(config.get("flow_shift", 1.0)),
            order=int(config.get("solver_order", 2)),
            solver_type=config.get("solver_type", "bh2"),
            lower_order_final=bool(config.get("lower_order_final", True)),
            num_train_timesteps=steps,
        )
    if cls == "FlowMatchEulerDiscreteScheduler":
        _check(config, _EULER_REQUIRED, where)
        return dict(name="euler", shift=float(config.get("shift", 1.0)), order=1, num_train_timesteps=steps)
    raise CheckpointError(
        f"{where}: scheduler {cls!r} is not supported (UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler)"
    )


__all__ = ["find_config", "sampler_defaults"]
