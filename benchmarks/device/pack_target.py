"""Pack a target dataset and a source model small enough for the lent GPU machine (its tree
travels in 64 MiB).

    python benchmarks/device/pack_target.py ../shared/data/dukemtmc/DukeMTMC-reID \
        .gpu/data/dukemtmc/DukeMTMC-reID 70
    tar -czf .gpu/duke.tgz -C .gpu data && rm -rf .gpu/data
    python benchmarks/device/pack_target.py --model \
        runs/source_market1501_mobilenet_cpu/checkpoints/best.pt .gpu/source_market1501_mobilenet.pt
    python benchmarks/device/pack_target.py --model --half \
        runs/source_market1501_pcb_cpu/checkpoints/best.pt .gpu/source_market1501_pcb.pt

The scripts beside this one (``m2d_seeds.sh``, ``m2d_ablations.sh``, ``past_pcb_m2d.sh``) read
them from ``.gpu/``, which ``.gitignore`` keeps out of git.

Every image of ``bounding_box_train``, ``query`` and ``bounding_box_test`` is resized to the CPU
presets' 128x64 (bilinear, what ``data.transforms.Resize`` does) and saved again as JPEG at the
given quality, with its file name kept. DukeMTMC-reID at quality 70 is 45 MiB (41.7 MB as
.tgz) against 102 MB; the MobileNetV2 source model's direct transfer on it is rank-1 / mAP
28.2 / 14.6 against 28.5 / 14.6 on the original images (dev half).

``--model`` keeps a checkpoint's model and drops the trainer state and RNG (the MobileNetV2
source: 12 MiB, not 41). ``--half`` also stores its floating-point tensors in half precision
(the PCB source: 13 MiB, not 26, so that it fits beside duke.tgz); ``load_state_dict`` casts
them back to float32 when the run loads them.
"""

import os
import sys
from pathlib import Path

from PIL import Image

SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def main(src: str, dst: str, quality: int) -> None:
    """Write into ``dst.part`` and rename it to ``dst`` at the end, so that a killed pack never
    leaves a ``dst`` that looks complete (``uda_runs.py`` packs when ``dst`` is missing)."""
    for split in SPLITS:
        if not (Path(src) / split).is_dir():
            sys.exit(f"{src}/{split}: no such folder (expected the standard re-ID layout)")
    if Path(dst).exists():
        sys.exit(f"{dst} exists already; remove it to pack again")
    part, total = Path(f"{dst}.part"), 0
    for split in SPLITS:
        os.makedirs(part / split, exist_ok=True)
        for f in sorted((Path(src) / split).glob("*.jpg")):
            im = Image.open(f).convert("RGB")
            if im.size != (64, 128):
                im = im.resize((64, 128), Image.BILINEAR)
            out = part / split / f.name
            im.save(out, quality=quality, optimize=True)
            total += out.stat().st_size
    part.rename(dst)
    print(f"{total / 2**20:.1f} MiB in {dst}")


def pack_model(src: str, dst: str, half: bool) -> None:
    import torch

    state = torch.load(src, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k not in ("trainer", "rng")}
    if half:
        state["model"] = {
            k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()
        }
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    torch.save(state, dst)
    print(f"{os.path.getsize(dst) / 2**20:.1f} MiB in {dst}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--model"]:
        half = "--half" in args
        rest = [a for a in args[1:] if a != "--half"]
        if len(rest) != 2:
            sys.exit(__doc__)
        pack_model(rest[0], rest[1], half)
    elif len(args) == 3:
        main(args[0], args[1], int(args[2]))
    else:
        sys.exit(__doc__)
