"""What ``amp: auto`` picks on this machine, and the probe's timings (issue 16).

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/precision_probe.py

MobileNetV2 + BNNeck (random weights: the probe times shapes, not values) at ``--height`` x
``--width``, one fresh cache per mode (training step, extraction forward), so the probe runs
even where ``~/.cache/adaptreid/precision.json`` already answers. Prints the machine key the
cache would use and each mode's choice with its fp32 and bf16 + channels_last timings.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from adaptreid.models.build import build_model
from adaptreid.runtime.precision import ProbeSettings, machine_id, resolve_precision


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--num-classes", type=int, default=751)
    args = ap.parse_args(argv)
    model = build_model(args.backbone, num_classes=args.num_classes, pretrained=None)
    cpu = torch.device("cpu")
    print(machine_id(cpu))
    for mode in ("train", "extract"):
        with tempfile.TemporaryDirectory() as d:
            amp, channels_last, reason = resolve_precision(
                "auto",
                model,
                (args.height, args.width),
                cpu,
                mode=mode,
                probe=ProbeSettings(cache_dir=d),
            )
        print(f"{mode}: amp={amp} channels_last={channels_last}  {reason}")


if __name__ == "__main__":
    main()
