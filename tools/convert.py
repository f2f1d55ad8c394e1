"""Convert ChronoEdit checkpoints between layouts (one tensor in memory at a time).

    # diffusers folder or Hub id -> native (optionally cast; fp32 islands stay as stored)
    python tools/convert.py nvidia/ChronoEdit-14B-Diffusers out/chronoedit-native --dtype bf16
    # native -> diffusers component folders (transformer/, vae/, text_encoder/, tokenizer/, scheduler/, …)
    python tools/convert.py out/chronoedit-native out/diffusers --shard-size 5GB
    # one-file DiT (Wan / ComfyUI naming, any prefix, fp8 dequantised), Wan2.1_VAE.pth or Wan's UMT5 -> native
    python tools/convert.py wan2.1_i2v_720p_14B_fp8_scaled.safetensors out/dit-native --dtype bf16
    python tools/convert.py Wan2.1_VAE.pth out/vae-native --component vae
    python tools/convert.py models_t5_umt5-xxl-enc-bf16.pth out/umt5-native --component text_encoder
    # a folder of loose files (ComfyUI's set, recognised by their keys) -> one complete native folder
    python tools/convert.py /comfy/models out/chronoedit-native --dtype bf16
    # ... with a part replaced or added, and a field single-file shapes cannot tell
    python tools/convert.py /comfy/models out/native --file image_encoder=clip_vision_h.safetensors \
        --file tokenizer=/ckpts/tokenizer --model dit.num_heads=40

The direction follows from the source; an existing non-empty output folder is refused without --overwrite.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '123' -> bytes."""
    for unit, factor in UNITS.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _pairs(items: list[str], option: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; a ValueError naming the option otherwise."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{option} {item!r}: expected NAME=VALUE")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    from chronoedit.checkpoint.convert import (
        diffusers_to_native,
        loose_to_native,
        native_to_diffusers,
        single_file_to_native,
    )
    from chronoedit.checkpoint.errors import CheckpointError
    from chronoedit.checkpoint.native import COMPONENTS, INDEX
    from chronoedit.checkpoint.registry import MODEL_INDEX

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="diffusers folder, Hub repo id, native folder, or a one-file DiT / VAE / UMT5")
    p.add_argument("dest", help="output folder")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating weights (to native only)")
    p.add_argument("--components", default=",".join(COMPONENTS), help="diffusers -> native: which components")
    p.add_argument(
        "--component",
        choices=["dit", "vae", "text_encoder", "image_encoder"],
        default="dit",
        help="what a one-file source holds",
    )
    p.add_argument("--shard-size", default="0", help="native -> diffusers: max shard size, e.g. 5GB (0: one file)")
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a component (dit, vae, text_encoder, image_encoder) or tokenizer / image_processor folder "
        "replacing the source's (repeatable; the source may then be '-': these files alone)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="COMPONENT.FIELD=VALUE",
        help="a config field single files cannot tell, e.g. dit.num_heads=40 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    p.add_argument("--local-files-only", action="store_true", help="Hub ids: use the local cache only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dtype = DTYPES[args.dtype] if args.dtype else None
    src = Path(args.source)
    try:
        files, overrides = _pairs(args.file, "--file"), _pairs(args.model, "--model")
        overrides = {k: yaml.safe_load(v) for k, v in overrides.items()}
        loose = args.source == "-" or (
            src.is_dir() and not (src / INDEX).is_file() and not (src / MODEL_INDEX).is_file()
        )
        one_file = src.is_file() and not files
        if one_file and all(k.startswith(f"{args.component}.") for k in overrides):  # fields shapes cannot tell
            hints = {k.split(".", 1)[1]: v for k, v in overrides.items()}
            out = single_file_to_native(
                src, args.dest, component=args.component, dtype=dtype, overwrite=args.overwrite, hints=hints
            )
            what = f"one-file {args.component} -> native"
        elif files or overrides or loose:
            out = loose_to_native(
                None if args.source == "-" else args.source, args.dest, files=files, overrides=overrides, dtype=dtype,
                overwrite=args.overwrite,
            )  # fmt: skip
            what = "files -> native"
        elif (src / INDEX).is_file():
            if dtype is not None:
                p.error("--dtype applies to conversions to native only")
            out = native_to_diffusers(
                src, args.dest, max_shard_bytes=parse_size(args.shard_size), overwrite=args.overwrite
            )
            what = "native -> diffusers"
        else:
            components = [c for c in args.components.split(",") if c]
            out = diffusers_to_native(
                args.source, args.dest, dtype=dtype, components=components, overwrite=args.overwrite,
                local_files_only=args.local_files_only,
            )  # fmt: skip
            what = "diffusers -> native"
    except (CheckpointError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{what}: wrote {out}")
    return 0


if __name__ == "__main__":
    from chronoedit.files import OutputError, check_output_location, lock_output

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise ValueError(message)

    def destination(argv: list[str]) -> str | None:
        """The output folder on the command line (None if it does not parse: main() then says why)."""
        p = _Parser(add_help=False)
        p.add_argument("source")
        p.add_argument("dest")
        for option in ("--dtype", "--components", "--component", "--shard-size"):
            p.add_argument(option)
        for option in ("--file", "--model"):
            p.add_argument(option, action="append")
        try:
            return p.parse_known_args(argv)[0].dest
        except ValueError:
            return None

    dest = None if {"-h", "--help"} & set(sys.argv[1:]) else destination(sys.argv[1:])
    try:
        if dest is not None:  # before anything is written: the folder may be made and written, and is ours alone
            check_output_location(dest, what="output folder")
            lock_output(dest, what="output folder")
        code = main()
    except (OutputError, OSError) as e:  # a full disk, a folder made read-only meanwhile: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)
