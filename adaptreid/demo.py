"""``adaptreid demo``: the main job end to end, on built-in data or on a real pair.

Source training -> direct transfer -> MSPLR adaptation -> a table of the three, like the
first rows of MSPLR's Table 1. Without ``data`` it draws the built-in synthetic two-domain
dataset (:mod:`adaptreid.data.synthetic`, no download) and uses ``configs/demo/*.yaml``: a
few minutes on two CPU cores. With ``data`` (a folder holding ``market1501/`` and
``dukemtmc/``, e.g. ``../shared/data``) it runs the CPU presets Market-1501 -> DukeMTMC-reID,
the papers' own benchmark (the README gives its wall time on two CPU cores).

A killed demo continues where it stopped when run again with the same output folder: both
runs resume from their last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from . import methods  # noqa: F401  (registers the built-in methods)
from .config import Config, load_config
from .engine.loop import LABEL_FREE_RULES, adapt
from .engine.supervised import train_source
from .errors import ConfigError, DatasetError
from .report.report import pick_step
from .rundir.run import RunDir

log = logging.getLogger("adaptreid")

__all__ = ["DemoResult", "demo_configs", "format_demo_table", "run_demo"]

#: ``--data DIR``: the real pair and its presets.
REAL_SOURCE = ("market1501", "source/market1501_mobilenet_cpu.yaml")
REAL_TARGET = ("dukemtmc", "msplr/market1501_to_dukemtmc_cpu.yaml")
REAL_WEIGHTS = "mobilenet_v2_imagenet_features.pth"


@dataclass
class DemoResult:
    """What the demo measured (fractions in [0, 1]) and where its runs are."""

    source_name: str
    target_name: str
    source_in_domain: dict[str, float]
    direct_transfer: dict[str, float]
    adapted: dict[str, float]
    """The model ``adapt.select`` picked (label-free by default): best.pt."""
    best_step: int
    num_steps: int
    rule: str
    oracle: dict[str, float]
    """The step with the best target test mAP: an oracle (it uses the target's test labels)."""
    oracle_step: int
    source_run: Path
    adapt_run: Path
    wall_time_s: float

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["source_run"], d["adapt_run"] = str(self.source_run), str(self.adapt_run)
        return d


def demo_configs(
    out_dir: str | Path,
    data: str | Path | None = None,
    weights: str | Path | None = None,
    overrides: list[str] | None = None,
) -> tuple[Config, Config]:
    """The source-training and MSPLR configs of the demo (``overrides`` apply to both)."""
    out = Path(out_dir)
    extra = list(overrides or [])
    if data is None:
        roots = [
            f"data.source_root={out / 'data' / 'synthetic-source'}",
            f"data.target_root={out / 'data' / 'synthetic-target'}",
        ]
        src_cfg, ada_cfg = "demo/source.yaml", "demo/msplr.yaml"
        weight_args: list[str] = []
    else:
        root = Path(data)
        missing = [n for n in (REAL_SOURCE[0], REAL_TARGET[0]) if not (root / n).is_dir()]
        if missing:
            raise DatasetError(
                f"demo --data {root}: expected the folders {REAL_SOURCE[0]}/ and "
                f"{REAL_TARGET[0]}/ in it (as in ../shared/data); missing: {', '.join(missing)}"
            )
        roots = [
            f"data.source_root={root / REAL_SOURCE[0]}",
            f"data.target_root={root / REAL_TARGET[0]}",
        ]
        src_cfg, ada_cfg = REAL_SOURCE[1], REAL_TARGET[1]
        w = Path(weights) if weights else root.parent / "weights" / REAL_WEIGHTS
        if not w.is_file():
            raise DatasetError(
                f"demo --data: ImageNet MobileNetV2 weights not found at {w}; pass --weights "
                "PATH (torchvision key layout)"
            )
        weight_args = [f"model.pretrained={w}"]
    common = [f"output_dir={out}", *roots]
    source = load_config(src_cfg, [*common, "name=source", *weight_args, *extra])
    best = Path(out) / "source" / "checkpoints" / "best.pt"
    adapt = load_config(ada_cfg, [*common, "name=msplr", f"adapt.init_checkpoint={best}", *extra])
    return source, adapt


def _resumable(cfg: Config) -> bool:
    return RunDir(Path(cfg.output_dir) / cfg.name).has_checkpoint()


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the run did not write its metrics")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pick(record: dict, prefix: str = "") -> dict[str, float]:
    return {k: float(record[prefix + k]) for k in ("rank1", "mAP") if prefix + k in record}


def collect_results(source_run: Path, adapt_run: Path, wall: float) -> DemoResult:
    """The demo's table from the two runs' ``metrics.jsonl``."""
    src = _records(source_run)
    ada = _records(adapt_run)
    evals = [r for r in src if r.get("kind") == "epoch" and "source_mAP" in r]
    if not evals:
        raise ConfigError(f"{source_run}: no source evaluation recorded")
    in_domain = _pick(max(evals, key=lambda r: r["source_mAP"]), "source_")
    steps = {r["step"]: r for r in ada if r.get("kind") == "step" and "mAP" in r}
    if 0 not in steps:
        raise ConfigError(f"{adapt_run}: no direct-transfer evaluation (step 0) recorded")
    cfg = _config_names(adapt_run)
    pick = pick_step(ada, cfg["rule"])
    oracle = pick_step(ada, "target_map")
    pick = 0 if pick is None else pick
    return DemoResult(
        source_name=cfg["source"],
        target_name=cfg["target"],
        source_in_domain=in_domain,
        direct_transfer=_pick(steps[0]),
        adapted=_pick(steps[pick]),
        best_step=int(pick),
        num_steps=max(steps),
        rule=cfg["rule"],
        oracle=_pick(steps[oracle]),
        oracle_step=int(oracle),
        source_run=source_run,
        adapt_run=adapt_run,
        wall_time_s=wall,
    )


def _config_names(run: Path) -> dict[str, str]:
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    return {
        "source": saved["data"]["source"],
        "target": saved["data"]["target"],
        "rule": saved.get("adapt", {}).get("select", "last"),
    }


def format_demo_table(r: DemoResult) -> str:
    """The Markdown table the demo prints (percentages)."""

    def row(name: str, on: str, m: dict[str, float]) -> str:
        return f"| {name:<44} | {on:<16} | {100 * m['rank1']:6.1f} | {100 * m['mAP']:5.1f} |"

    gain = 100 * (r.adapted["mAP"] - r.direct_transfer["mAP"])
    how = "label-free pick" if r.rule in LABEL_FREE_RULES else f"select: {r.rule}"
    lines = [
        f"| {'model':<44} | {'evaluated on':<16} | rank-1 | mAP   |",
        f"|{'-' * 46}|{'-' * 18}|--------|-------|",
        row("source model, supervised", r.source_name, r.source_in_domain),
        row("direct transfer (no adaptation)", r.target_name, r.direct_transfer),
        row(f"MSPLR, {how}: step {r.best_step} of {r.num_steps}", r.target_name, r.adapted),
        row(f"MSPLR, oracle (test labels): step {r.oracle_step}", r.target_name, r.oracle),
        "",
        f"Adaptation changed target mAP by {gain:+.1f} points with the {how} "
        f"({r.wall_time_s / 60:.1f} min in all). The oracle row picks the step by the "
        "target's test labels, which a user adapting their own cameras does not have.",
    ]
    return "\n".join(lines)


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    data: str | Path | None = None,
    weights: str | Path | None = None,
    overrides: list[str] | None = None,
    verbose: bool = True,
) -> DemoResult:
    """Train on the source, adapt with MSPLR, and return the table's figures.

    Writes ``out_dir/source`` and ``out_dir/msplr`` (each a normal run folder with
    ``report.md``) and ``out_dir/demo.md`` / ``demo.json`` (the table)."""
    t0 = time.perf_counter()
    source_cfg, adapt_cfg = demo_configs(out_dir, data, weights, overrides)
    log.info("demo 1/2: supervised training on %s", source_cfg.data.source)
    source_run = train_source(source_cfg, resume=_resumable(source_cfg), verbose=verbose)
    log.info("demo 2/2: MSPLR adaptation to %s", adapt_cfg.data.target)
    adapt_run = adapt(adapt_cfg, resume=_resumable(adapt_cfg), verbose=verbose)
    result = collect_results(source_run.path, adapt_run.path, time.perf_counter() - t0)
    out = Path(out_dir)
    table = format_demo_table(result)
    (out / "demo.md").write_text(
        f"# adaptreid demo\n\n{table}\n\nReports: [source]({result.source_run.name}/report.md), "
        f"[MSPLR]({result.adapt_run.name}/report.md)\n"
    )
    (out / "demo.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
