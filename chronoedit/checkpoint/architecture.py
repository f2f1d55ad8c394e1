"""What to build and where its weights come from: ``checkpoint``, ``init`` and the ``model.*`` overrides.

* ``init=random``: the architecture is the composed ``model`` config; weights are seeded random.
* ``init=checkpoint``: the architecture is the checkpoint's; the ``model.*`` fields given explicitly (on the
  command line, or a ``model=`` preset chosen there) replace the checkpoint's values, and every component must
  then fit its weights — checked on headers before any tensor is read, the error naming the override.
* ``init=auto`` (default): random for ``checkpoint=tiny`` (no weights), else checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chronoedit.checkpoint.errors import CheckpointError
from chronoedit.checkpoint.registry import NAMES, Source, check_fit, open_component
from chronoedit.models.spec import override_config, split_overrides

NO_CHECKPOINT = "tiny"  # the built-in name for "no weights": random weights of the `model` config
# Checkpoints shipped inside the package, by name: ``checkpoint=toy`` is ChronoEdit-Toy (tools/make_toy.py).
NAMED_CHECKPOINTS = {"toy": Path(__file__).resolve().parents[1] / "assets" / "toy"}


def named_checkpoint(checkpoint: str | None) -> str | None:
    """``checkpoint`` with a shipped name (``toy``) replaced by its folder; anything else unchanged. A name whose
    folder is not in this tree is a one-line ValueError saying how to build it."""
    if checkpoint not in NAMED_CHECKPOINTS:
        return checkpoint
    folder = NAMED_CHECKPOINTS[checkpoint]
    if not (folder / "chronoedit.yaml").is_file():
        raise ValueError(f"checkpoint={checkpoint}: not built in this tree ({folder}); `make toy` trains and ships it")
    return str(folder)


INITS = ("auto", "random", "checkpoint")


def resolve_init(checkpoint: str | None, init: str, files: Mapping[str, Any] | None = None) -> str:
    """``random`` or ``checkpoint``; a ValueError for an impossible pair. Per-component ``files`` naming every
    component are weights even without a checkpoint."""
    if init not in INITS:
        raise ValueError(f"init={init!r} must be one of {INITS}")
    has_weights = checkpoint not in (None, "", NO_CHECKPOINT) or set(NAMES) <= {
        k for k, v in (files or {}).items() if v
    }
    if init == "auto":
        return "checkpoint" if has_weights else "random"
    if init == "checkpoint" and not has_weights:
        raise ValueError(f"init=checkpoint needs checkpoint=<folder, file or Hub id> (got {checkpoint!r})")
    return init


def open_model(
    checkpoint: str,
    overrides: Mapping[str, Any] | None = None,
    names: Sequence[str] = NAMES,
    files: Mapping[str, str] | None = None,
    **hub: Any,
) -> tuple[dict[str, Source], Any]:
    """The components ``names`` of ``checkpoint`` (headers only; any layout, a folder of loose files, or None with
    per-component ``files`` alone) with the ``model.*`` ``overrides`` (``{"dit.num_layers": 4}``) applied to their
    configs, each checked against its weights; for single files the overrides also fill what the shapes cannot
    tell (head counts). Returns the sources and the resolved
    :class:`~chronoedit.checkpoint.resolve.CheckpointInfo` (None for a single file)."""
    from pathlib import Path

    from chronoedit.checkpoint.resolve import resolve_checkpoint

    if checkpoint and Path(checkpoint).is_file() and not files:  # one component's file (e.g. a Wan-named DiT)
        if len(names) != 1:
            raise CheckpointError(f"{checkpoint}: a single file holds one component, {len(names)} are needed")
        info, paths = None, {names[0]: Path(checkpoint)}
    else:
        info = resolve_checkpoint(checkpoint, components=names, files=files, **hub)
        paths = info.components
    changes = split_overrides(overrides or {})
    sources = {}
    for name in names:
        src = open_component(paths[name], name, hints=changes.get(name))
        if name in changes:
            src.config = override_config(src.config, name, changes[name])
            try:
                check_fit(src)
            except CheckpointError as e:
                given = ", ".join(f"model.{name}.{k}={v}" for k, v in changes[name].items())
                raise CheckpointError(f"{given} does not fit the weights: {e}") from None
        sources[name] = src
    return sources, info


__all__ = ["INITS", "NAMED_CHECKPOINTS", "NO_CHECKPOINT", "named_checkpoint", "open_model", "resolve_init"]
