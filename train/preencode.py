"""Pre-encode a training dataset (VAE latents, condition, UMT5 and CLIP embeddings) so training holds only the DiT.

    python train/preencode.py dataset=data/edits output=data/edits_cache checkpoint=/ckpts/ChronoEdit-14B-Diffusers
    python train/preencode.py dataset=data/edits output=data/edits_cache height=720 width=1280

The dataset folder holds metadata.jsonl (or metadata.csv): input, output (image or video), prompt per row.
Then: python train/train.py data.cache=data/edits_cache …   Every key: configs/preencode.yaml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from chronoedit.builders import preflight, register, to_object  # noqa: E402
from chronoedit.training.preencode_config import PreencodeConfig  # noqa: E402

register()


def check(cfg: PreencodeConfig) -> None:
    """The cheap checks: the metadata parses, the output folder may be written."""
    from chronoedit.training.preencode import check_output, read_metadata

    read_metadata(cfg.dataset)
    check_output(Path(cfg.output), cfg.overwrite)
    from chronoedit.checkpoint.architecture import resolve_init

    if cfg.checkpoint != "tiny" and not Path(cfg.checkpoint).exists():
        raise ValueError(f"checkpoint={cfg.checkpoint}: no such folder")
    resolve_init(cfg.checkpoint, cfg.init)


@hydra.main(version_base="1.3", config_path="../configs", config_name="preencode")
def main(cfg: DictConfig) -> None:
    import torch

    from chronoedit.builders import model_overrides
    from chronoedit.pipeline.components import load_components
    from chronoedit.runtime import resolve_device, resolve_dtype
    from chronoedit.training.preencode import encoders_from_components, preencode

    pc = to_object(cfg, PreencodeConfig)
    device = resolve_device(pc.runtime.device)
    dtype = resolve_dtype(pc.runtime.dtype, device)
    from chronoedit.checkpoint.errors import CheckpointError

    overrides = model_overrides(list(HydraConfig.get().overrides.task), pc.model)
    try:
        components = load_components(
            pc.checkpoint, dtype=dtype, model=pc.model, init=pc.init, overrides=overrides, seed=pc.init_seed
        )
        with torch.no_grad():
            meta = preencode(pc, encoders_from_components(components, device, dtype, pc.runtime.vae), dtype)
    except (CheckpointError, ValueError, OSError) as e:  # a misfit override, a bad file, a full disk: one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"output": pc.output, "counts": meta["counts"], "skipped": meta["skipped"]}))


if __name__ == "__main__":
    from chronoedit.files import OutputError, check_output_location, lock_output

    checked: list[PreencodeConfig] = []

    def check_all(cfg: PreencodeConfig) -> None:
        check_output_location(cfg.output, what="output")  # before anything is created: it may be made, written
        check(cfg)
        checked.append(cfg)

    error = preflight(ROOT / "configs", "preencode", sys.argv[1:], schema=PreencodeConfig, check=check_all)
    if not error:
        try:  # one pre-encoding per output folder: a second is refused while this process lives
            lock_output(checked[-1].output, what="output")
        except OutputError as e:
            error = str(e)
    if error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
