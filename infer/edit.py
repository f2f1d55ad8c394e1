"""Edit an image with ChronoEdit.  python infer/edit.py key=value …   (every key: configs/edit.yaml)

    python infer/edit.py                                     # the tiny random demo model on the shipped image
    python infer/edit.py checkpoint=/ckpts/ChronoEdit-14B-Diffusers image=cat.png prompt="Add sunglasses"
    python infer/edit.py ... reasoning.steps=10 save_frames=true   # temporal reasoning for the first 10 steps
    python infer/edit.py model=chronoedit_14b model.dit.num_layers=4 init=random  # any architecture, random weights
    python infer/edit.py -m ... reasoning.steps=0,5,10,50           # a sweep: one folder per run, grid.png, timings.md

Writes into output_dir: edit.png, config.yaml, summary.json, and on request frames/, latents.safetensors;
the reasoning video (video.webp, video.mp4 with imageio-ffmpeg) when one was decoded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from chronoedit.builders import EditConfig, model_overrides, preflight, register, to_object  # noqa: E402

register()


@hydra.main(version_base="1.3", config_path="../configs", config_name="edit")
def main(cfg: DictConfig) -> None:
    from chronoedit.checkpoint.errors import CheckpointError
    from chronoedit.pipeline.job import run

    hc = HydraConfig.get()
    edit = to_object(cfg, EditConfig)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and edit.output_dir is not None:
        raise SystemExit("error: output_dir cannot be set in a multirun (each run gets its own sweep folder)")
    out = Path(edit.output_dir) if edit.output_dir else Path(hc.runtime.output_dir)
    try:
        summary = run(edit, out, model_overrides(list(hc.overrides.task), edit.model))
    except (ValueError, CheckpointError) as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"output_dir": str(out), "seconds": summary["total_seconds"]}))


if __name__ == "__main__":
    from chronoedit.files import OutputError, check_output_location, lock_output

    sweep = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    checked: list[EditConfig] = []

    def check_output(edit: EditConfig) -> None:
        """Before Hydra creates the run folder: it may be made (not a file, not under one, writable)."""
        if edit.output_dir is not None:
            check_output_location(edit.output_dir, what="output_dir")
        else:  # Hydra's outputs/<date>/<time> (a sweep: multirun/<date>/<time>) under the working directory
            check_output_location("multirun" if sweep else "outputs", what="the output folder")
        checked.append(edit)

    error = preflight(ROOT / "configs", "edit", sys.argv[1:], check=check_output)
    rank0 = os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 owns the output folder
    if not error and checked[-1].output_dir is not None and not sweep and rank0:
        try:  # one edit per output_dir: a second is refused while this process lives (and before Hydra makes it)
            lock_output(checked[-1].output_dir, what="output_dir")
        except OutputError as e:
            error = str(e)
    if error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
