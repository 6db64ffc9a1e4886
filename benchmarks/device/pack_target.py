"""Pack a target dataset small enough for the lent GPU machine (its tree travels in 64 MiB).

    python benchmarks/device/pack_target.py ../shared/data/dukemtmc/DukeMTMC-reID \
        .gpu/data/dukemtmc/DukeMTMC-reID 70
    tar -czf .gpu/duke.tgz -C .gpu data && rm -rf .gpu/data
    python -c "import torch; s = torch.load(
        'runs/source_market1501_mobilenet_cpu/checkpoints/best.pt', weights_only=False)
    torch.save({k: v for k, v in s.items() if k not in ('trainer', 'rng')},
        '.gpu/source_market1501_mobilenet.pt')"   # the source model's weights: 12 MiB, not 41

The scripts beside this one (``m2d_seeds.sh``, ``m2d_ablations.sh``) read both from ``.gpu/``.

Every image of ``bounding_box_train``, ``query`` and ``bounding_box_test`` is resized to the CPU
presets' 128x64 (bilinear, what ``data.transforms.Resize`` does) and saved again as JPEG at the
given quality, with its file name kept. DukeMTMC-reID at quality 70 is 45 MiB (41.7 MB as
.tgz) against 102 MB; the MobileNetV2 source model's direct transfer on it is rank-1 / mAP
28.2 / 14.6 against 28.5 / 14.6 on the original images (dev half). ``.gpu/`` is excluded from
git (``.git/info/exclude``); the scripts beside this one read it there.
"""

import os
import sys
from pathlib import Path

from PIL import Image

SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def main(src: str, dst: str, quality: int) -> None:
    total = 0
    for split in SPLITS:
        if not (Path(src) / split).is_dir():
            sys.exit(f"{src}/{split}: no such folder (expected the standard re-ID layout)")
        os.makedirs(f"{dst}/{split}", exist_ok=True)
        for f in sorted((Path(src) / split).glob("*.jpg")):
            im = Image.open(f).convert("RGB")
            if im.size != (64, 128):
                im = im.resize((64, 128), Image.BILINEAR)
            out = Path(dst) / split / f.name
            im.save(out, quality=quality, optimize=True)
            total += out.stat().st_size
    print(f"{total / 2**20:.1f} MiB in {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
