"""Fine-tune ChronoEdit (LoRA or full) with the flow-matching objective.   python train/train.py key=value …

    python train/train.py experiment=tiny_lora_cpu                        # seconds on a CPU: tiny model, synthetic data
    python train/train.py experiment=tiny_lora_cpu run_dir=runs/a resume=true steps=40   # continue a run
    torchrun --nproc_per_node=8 train/train.py experiment=lora_14b \
        checkpoint=/ckpts/ChronoEdit-14B-Diffusers data.cache=/data/cache run_dir=/runs/lora
    python train/train.py model=tiny model.dit.num_layers=4 model.dit.dim=128 init=random mode=full   # from scratch

Writes into run_dir: config.yaml, metrics.jsonl, checkpoints/step_XXXXXXXX/, and lora.safetensors (PEFT naming,
loads in our pipeline and diffusers) or export/ (full training: a native checkpoint folder, loads with
infer/edit.py checkpoint=<run_dir>/export). Every key: chronoedit/training/config.py TrainConfig.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from chronoedit.builders import model_overrides, preflight, register, to_object  # noqa: E402
from chronoedit.training.config import TrainConfig  # noqa: E402
from chronoedit.training.run import check_inputs  # noqa: E402

register()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from chronoedit.training.run import run  # the heavy imports once the config is known to be valid

    train = to_object(cfg, TrainConfig)
    run_dir = Path(train.run_dir) if train.run_dir else Path(HydraConfig.get().runtime.output_dir)
    try:
        check_inputs(train, run_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from chronoedit.checkpoint.errors import CheckpointError

    try:
        run(train, run_dir, model_overrides(list(HydraConfig.get().overrides.task), train.model))
    except (CheckpointError, ValueError, OSError) as e:  # e.g. a misfit model.* override, a full disk: one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    import os

    from chronoedit.files import OutputError, check_output_location, lock_output

    checked: list[TrainConfig] = []

    def check(train: TrainConfig) -> None:
        """Before Hydra creates the run folder: it may be made (not a file, not under one, writable); then the
        rest of the inputs."""
        check_output_location(train.run_dir or "outputs/train", what="run_dir")
        check_inputs(train)
        checked.append(train)

    error = preflight(ROOT / "configs", "train", sys.argv[1:], schema=TrainConfig, check=check)
    if not error and checked[-1].run_dir is not None and os.environ.get("RANK", "0") == "0":
        try:  # one training per run_dir: a second is refused while this process lives
            lock_output(checked[-1].run_dir, what="run_dir")
        except OutputError as e:
            error = str(e)
    if error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
