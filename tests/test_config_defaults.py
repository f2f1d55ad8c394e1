"""The YAML files and the typed dataclasses state the same defaults (a researcher reads either one)."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from chronoedit.builders import register, to_object
from chronoedit.pipeline.config import EditConfig
from chronoedit.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def composed(name: str, schema: type, overrides: tuple[str, ...] = ()):
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name=name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    return to_object({k: v for k, v in cfg.items() if k != "hydra"}, schema)


def differences(a, b, prefix: str = "") -> list[str]:
    """Field paths where two dataclass trees disagree."""
    out = []
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if is_dataclass(x) and is_dataclass(y) and type(x) is type(y):
            out += differences(x, y, f"{prefix}{f.name}.")
        elif x != y:
            out.append(f"{prefix}{f.name}: yaml={x!r} dataclass={y!r}")
    return out


@pytest.mark.parametrize("name,schema", [("edit", EditConfig), ("train", TrainConfig)])
def test_yaml_defaults_equal_dataclass_defaults(name, schema):
    # edit.yaml's default preset is the shipped toy model; preset=tiny is the library's defaults
    overrides = ("preset=tiny",) if name == "edit" else ()
    assert differences(composed(name, schema, overrides), schema()) == []


def test_the_toy_preset_states_the_toy_settings():
    cfg = composed("edit", EditConfig, ("preset=toy", "checkpoint=tiny"))  # the toy weights need not be built
    assert (cfg.height, cfg.width, cfg.prompt) == (128, 128, "turn the red circle green")
    assert (cfg.sampler.steps, cfg.sampler.shift, cfg.guidance_scale, cfg.reasoning.steps) == (16, 3.0, 1.0, 0)
    toy_sampler = composed("edit", EditConfig, ("preset=tiny", "sampler=toy")).sampler
    assert toy_sampler == cfg.sampler  # configs/sampler/toy.yaml and the preset agree


def test_a_shipped_name_that_is_not_built_is_a_one_line_error(monkeypatch, tmp_path):
    from chronoedit.checkpoint import architecture

    monkeypatch.setitem(architecture.NAMED_CHECKPOINTS, "toy", tmp_path / "absent")
    with pytest.raises(ValueError, match=r"checkpoint=toy: not built in this tree .*make toy"):
        EditConfig(checkpoint="toy")
