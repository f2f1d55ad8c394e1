"""The one library module that touches Hydra/OmegaConf: schema registration, config -> dataclass conversion,
a one-line preflight check of command-line overrides, and the multirun summary callback.

Library modules never see a DictConfig: entry points call :func:`to_object` and pass dataclasses on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from chronoedit.models.spec import COMPONENT_FIELDS, ModelSpec, flatten
from chronoedit.pipeline.config import EditConfig
from chronoedit.toyworld.eval_config import EvalConfig
from chronoedit.training.config import TrainConfig
from chronoedit.training.preencode_config import PreencodeConfig


def _first_set(*values: Any) -> Any:
    """``${ce.first:a,b,…}``: the first value that is not null or empty (e.g. a run folder, else a default)."""
    return next((v for v in values if v not in (None, "")), None)


def register() -> None:
    """Register the typed schemas with Hydra's ConfigStore and our one resolver (entry points call this first)."""
    if not OmegaConf.has_resolver("ce.first"):
        OmegaConf.register_new_resolver("ce.first", _first_set)
    cs = ConfigStore.instance()
    cs.store(name="edit_schema", node=EditConfig)
    cs.store(group="model", name="base", node=ModelSpec)  # the dataclass defaults; every model/*.yaml starts here
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="preencode_schema", node=PreencodeConfig)
    cs.store(name="eval_schema", node=EvalConfig)


def to_object(cfg: DictConfig | dict[str, Any], schema: type) -> Any:
    """A composed config -> an instance of ``schema`` (dataclasses all the way down, validated)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))


def compose_config(config_dir: Path, config_name: str, overrides: list[str], schema: type) -> tuple[Any, dict]:
    """What an entry point gets for ``overrides`` on its command line, in-process: the config as ``schema`` and
    its explicit :func:`model_overrides` (for tests and notebooks)."""
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    obj = to_object({k: v for k, v in cfg.items() if k != "hydra"}, schema)
    return obj, model_overrides(overrides, obj.model)


def to_yaml(obj: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(obj))


def model_overrides(task_overrides: list[str], model: ModelSpec) -> dict[str, Any]:
    """The ``model.*`` fields the command line set explicitly, with their composed values, as
    ``{"dit.num_layers": 4}``. Choosing a preset (``model=tiny``) or a whole component sets all of its fields.
    With ``init=checkpoint`` these replace the checkpoint's own; nothing else of ``model`` does."""
    every = flatten(model)
    out: dict[str, Any] = {}
    for o in OverridesParser.create().parse_overrides([a for a in task_overrides if not a.startswith("hydra")]):
        key = o.get_key_element().lstrip("+~")
        if key == "model":
            return every
        if key.startswith("model."):
            path = key.removeprefix("model.")
            if path in COMPONENT_FIELDS:
                out.update({k: v for k, v in every.items() if k.startswith(path + ".")})
            elif path in every:
                out[path] = every[path]
    return out


def _first_of_sweeps(args: list[str]) -> list[str]:
    """Command-line overrides with every sweep (``k=a,b``) replaced by its first value; Hydra flags dropped."""
    plain = [a for a in args if not a.startswith("-") and not a.startswith("hydra.") and not a.startswith("hydra/")]
    out = []
    for o in OverridesParser.create().parse_overrides(plain):
        if o.is_sweep_override():
            first = next(iter(o.sweep_iterator()))
            out.append(f"{o.get_key_element()}={o._get_value_element_as_str(first)}")
        else:
            out.append(f"{o.get_key_element()}={o.get_value_element_as_str()}")
    return out


def preflight(
    config_dir: Path,
    config_name: str,
    args: list[str],
    schema: type = EditConfig,
    check: Callable[[Any], None] | None = None,
) -> str | None:
    """Compose the config with the command line and convert it to ``schema``, then run ``check`` on the result
    (e.g. that the dataset exists); the first line of the error, if any (an unknown key, a wrong type, an invalid
    value, a missing file), else None. Runs before any model is loaded."""
    try:
        overrides = _first_of_sweeps(args)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
        obj = to_object({k: v for k, v in cfg.items() if k != "hydra"}, schema)
        if check is not None:
            check(obj)
    except Exception as e:  # any composition error becomes one line for the user
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        message = lines[0] if lines else type(e).__name__
        detail = next((ln for ln in lines[1:] if "not in struct" in ln or "Value '" in ln), None)
        return f"{message} ({detail})" if detail else message
    finally:
        GlobalHydra.instance().clear()
    return None


class MultirunSummary(Callback):
    """After a sweep: ``grid.png`` (every run's edit, labelled by its overrides) and ``timings.md``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from chronoedit.pipeline.report import write_sweep_summary

        sweep = Path(config.hydra.sweep.dir)
        if sweep.is_dir():
            written = write_sweep_summary(sweep)
            if written:
                print(json.dumps({"sweep_summary": [str(p) for p in written]}))


class EvalSweepSummary(Callback):
    """After an eval sweep: ``sweep.md`` / ``sweep.csv`` (every run's headline metrics against the swept keys)
    and ``sweep.png`` (with matplotlib)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from chronoedit.toyworld.report import write_eval_sweep

        sweep = Path(config.hydra.sweep.dir)
        if sweep.is_dir():
            written = write_eval_sweep(sweep)
            if written:
                print(json.dumps({"sweep_summary": [str(p) for p in written]}))
