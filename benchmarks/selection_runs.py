"""Small-target adaptation runs for the label-free model choice (which step's model to keep).

    python benchmarks/selection_runs.py --list          # the runs and where each stands
    python benchmarks/selection_runs.py                 # run every unfinished one, in order
    python benchmarks/selection_runs.py --only pku      # those whose name contains a string
    python benchmarks/selection_runs.py --table         # every rule on every run (markdown)
    python benchmarks/selection_runs.py --redo          # again, the runs recorded without
                                                        # per-query APs (replaces their records)

The Market -> Duke / Duke -> Market benchmark runs improve at almost every step, so any rule
that grows with training picks well there. A user's own small camera network does not: a
target of a few thousand crops from 2-3 cameras peaks after one or two steps and then
degrades. These runs make such targets from the data in ../shared:

* ``pku``: PKU-Reid as it is (592 training images, 2 cameras);
* ``duke_c<cams>``: DukeMTMC-reID restricted to a few cameras (training images of those
  cameras; query / gallery of the dev half from the same cameras), written as a CSV manifest
  under ``runs/small_targets/<name>/`` (a ``data`` link points at the Duke folder);

and adapt the Market-1501 source model of ../shared/checkpoints to them with longer schedules
and noisier labels (a loose eps, k-means) than the presets'. Every run keeps every step's
model (``adapt.keep_steps``), holds back a slice of the step-1 clusters (``adapt.holdout``)
and records every label-free score of every step (``select`` records), so that each rule's
choice can be read from ``metrics.jsonl`` next to the oracle's (the step with the best target
test mAP, which uses test labels). The queue, the lock and the committed records work as in
``uda_runs.py`` (records in ``benchmarks/results/selection_runs/<name>/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import uda_runs as U

from adaptreid.report.report import gap_text, pick_step, step_difference

ROOT = U.ROOT
RECORDS = ROOT / "benchmarks" / "results" / "selection_runs"
SOURCE = "../shared/checkpoints/source_market1501_mobilenet_cpu.pt"
DUKE = ROOT.parent / "shared" / "data" / "dukemtmc" / "DukeMTMC-reID"
SMALL = ROOT / "runs" / "small_targets"
#: rules compared in the table (adapt.select values); target_map is the oracle
RULES = ("holdout", "agreement", "snd", "cross_camera", "last")

#: every run: labels are scored whatever the rule, so ``select`` only decides best.pt
COMMON = [
    f"adapt.init_checkpoint={SOURCE}",
    "adapt.select=holdout",
    "adapt.holdout=0.15",
    "adapt.patience=0",
    "adapt.keep_steps=true",
    "train.amp=none",
]
#: PKU-Reid: 592 images, so short steps (18 iterations an epoch at 32 a batch)
PKU = [
    "adapt.max_steps=8",
    "adapt.epochs_per_step=6",
    "train.freeze_epochs=2",
    "optim.warmup_epochs=1",
    "optim.milestones=[4]",
]


def duke_subset(name: str, cameras: tuple[int, ...]) -> Path:
    """Write ``runs/small_targets/<name>/manifest.csv`` for DukeMTMC-reID's ``cameras``:
    every training image of those cameras (pids kept for label figures only), and the dev
    half's query / gallery images of those cameras. Returns the folder."""
    folder = SMALL / name
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "data"
    if not link.exists():
        os.symlink(DUKE.resolve(), link)
    rows = []
    for split, sub in (("train", "bounding_box_train"), ("query", "query")):
        rows += _duke_rows(split, sub, cameras)
    rows += _duke_rows("gallery", "bounding_box_test", cameras)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "pid", "camid", "split"])
        w.writerows(rows)
    return folder


def _duke_rows(split: str, sub: str, cameras: tuple[int, ...]) -> list[list]:
    out = []
    for p in sorted((DUKE / sub).glob("*.jpg")):
        pid, cam = p.name.split("_")[:2]
        if int(cam[1:]) in cameras:
            out.append([f"data/{sub}/{p.name}", int(pid), int(cam[1:]), split])
    return out


def _duke(name: str, subset: str, config: str, extra: list[str]) -> U.Run:
    root = (SMALL / subset).relative_to(ROOT)
    target = ["data.target=manifest", f"data.target_root={root}"]
    return U.Run(name, "adapt", config, [*COMMON, *target, *extra], group=subset)


#: the "your own cameras" presets run as a user would (their rule, holdout and patience), with
#: every step's model kept for the table and fp32 as the other runs
OWN = [f"adapt.init_checkpoint={SOURCE}", "adapt.keep_steps=true", "train.amp=none"]
OWN_CFG = "msplr/own_cameras_cpu.yaml"
CAP = "pseudo.max_kept_growth=0.1"
PKU_DATA = ["data.target=pku-reid", "data.target_root=../shared/data/pku-reid"]
PKU_CFG = "msplr/market1501_to_pku_cpu.yaml"
DUKE_CFG = "msplr/market1501_to_dukemtmc_cpu.yaml"
#: Duke subsets: their cameras
SUBSETS = {"duke_c34": (3, 4), "duke_c578": (5, 7, 8), "duke_c78": (7, 8), "duke_c25": (2, 5)}
RUNS: list[U.Run] = [
    U.Run("pku_msplr", "adapt", PKU_CFG, [*COMMON, *PKU], group="pku"),
    U.Run(
        "pku_msplr_loose",
        "adapt",
        PKU_CFG,
        [*COMMON, *PKU, "pseudo.auto_eps=false", "pseudo.eps=1.0"],
        group="pku",
    ),
    U.Run(
        "pku_msplr_kmeans",
        "adapt",
        PKU_CFG,
        [*COMMON, *PKU, "pseudo.method=kmeans", "pseudo.l2_after=false", "pseudo.kmeans_k=40"],
        group="pku",
    ),
    U.Run(
        "pku_msplr_long",
        "adapt",
        PKU_CFG,
        [*COMMON, *PKU, "adapt.max_steps=12", "adapt.epochs_per_step=10", "optim.milestones=[7]"],
        group="pku",
    ),
    U.Run(
        "pku_cc",
        "adapt",
        "cluster_contrast/market1501_to_dukemtmc_cpu.yaml",
        [
            *COMMON,
            *PKU_DATA,
            "adapt.max_steps=8",
            "adapt.epochs_per_step=2",
        ],
        group="pku",
    ),
    _duke("duke_c34", "duke_c34", DUKE_CFG, []),
    _duke("duke_c34_loose", "duke_c34", DUKE_CFG, ["pseudo.auto_eps=false", "pseudo.eps=0.8"]),
    _duke("duke_c578", "duke_c578", DUKE_CFG, []),
    U.Run("pku_msplr_seed2", "adapt", PKU_CFG, [*COMMON, *PKU, "seed=2"], group="pku"),
    U.Run("pku_own", "adapt", OWN_CFG, [*OWN, *PKU_DATA], group="pku"),
    U.Run("pku_own_cap", "adapt", OWN_CFG, [*OWN, *PKU_DATA, CAP], group="pku"),  # growth cap
    U.Run("pku_own_seed1", "adapt", OWN_CFG, [*OWN, *PKU_DATA, "seed=1"], group="pku"),
    U.Run("pku_own_seed2", "adapt", OWN_CFG, [*OWN, *PKU_DATA, "seed=2"], group="pku"),
    # the own preset's schedule without patience: what a longer run would have reached
    U.Run(
        "pku_own_nopatience", "adapt", OWN_CFG, [*OWN, *PKU_DATA, "adapt.patience=0"], group="pku"
    ),
    # the other methods' own-cameras presets
    U.Run(
        "pku_own_cc",
        "adapt",
        "cluster_contrast/own_cameras_cpu.yaml",
        [*OWN, *PKU_DATA],
        group="pku",
    ),
    U.Run("pku_own_past", "adapt", "past/own_cameras_cpu.yaml", [*OWN, *PKU_DATA], group="pku"),
    _duke("duke_c78", "duke_c78", DUKE_CFG, []),
    U.Run(
        "duke_c25_own",
        "adapt",
        OWN_CFG,
        [*OWN, "data.target=manifest", "data.target_root=runs/small_targets/duke_c25"],
        group="duke_c25",
    ),
    _duke(
        "duke_c25_kmeans",
        "duke_c25",
        DUKE_CFG,
        ["pseudo.method=kmeans", "pseudo.l2_after=false", "pseudo.kmeans_k=300"],
    ),
    # the own preset with the kept portion's growth capped at 10 points a step
    U.Run(
        "duke_c25_own_cap",
        "adapt",
        OWN_CFG,
        [*OWN, "data.target=manifest", "data.target_root=runs/small_targets/duke_c25", CAP],
        group="duke_c25",
    ),
    _duke(
        "duke_c78_long",
        "duke_c78",
        DUKE_CFG,
        ["adapt.max_steps=10", "adapt.epochs_per_step=8", "optim.milestones=[6]"],
    ),
]


def _records(name: str) -> list[dict]:
    for folder in (ROOT / "runs" / name, RECORDS / name):
        path = folder / "metrics.jsonl"
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


#: the table's columns: (title, adapt.select, adapt.patience replayed on the records)
COLUMNS = (
    ("holdout + patience 2 (default)", "holdout", 2),
    *((rule, rule, 0) for rule in RULES),
)


def _steps(recs: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in recs if r.get("kind") == "step" and "mAP" in r}


def rule_table(names: list[str]) -> str:
    """Markdown: per run made without patience, the oracle step and mAP, then each column's
    step and its mAP minus the oracle's; at the bottom, how many runs each column keeps
    within 1 / 2 mAP of the oracle, and on how many it keeps the source model (step 0)
    although adaptation helped. Runs with per-query records (made since 2026-12-07) also
    show each gap's 90% interval over the test identities, and the footer counts the picks
    whose interval holds 0 (the test split cannot tell them from the oracle's)."""
    titles = [c[0] for c in COLUMNS]
    head = "| run | steps | mAP by step | oracle (step: mAP) | " + " | ".join(titles) + " |"
    lines = [head, "|" + "---|" * (4 + len(COLUMNS))]
    # within 1, within 2, runs, source kept, interval holds 0, runs with an interval
    near = {c: [0, 0, 0, 0, 0, 0] for c in titles}
    intervals = False
    for name in names:
        recs = _records(name)
        steps = _steps(recs)
        per_query = any(r.get("kind") == "per_query" for r in recs)
        intervals |= per_query
        if len(steps) < 2 or any(r.get("kind") == "stop" for r in recs):
            continue  # a run that patience stopped early: own_table
        oracle = pick_step(recs, "target_map")
        best = 100 * steps[oracle]["mAP"]
        cells = []
        for title, rule, patience in COLUMNS:
            s = pick_step(recs, rule, patience)
            if s is None or s not in steps:
                cells.append("-")
                continue
            d = 100 * steps[s]["mAP"] - best
            n = near[title]
            n[0] += d >= -1
            n[1] += d >= -2
            n[2] += 1
            n[3] += s == 0 and oracle != 0
            if per_query:  # the pick's difference from the oracle's, over the identities
                diff = step_difference(recs, s, oracle) if s != oracle else None
                n[4] += s == oracle or (diff is not None and diff.contains(0.0))
                n[5] += 1
            cells.append(f"{s}: {gap_text(recs, s, oracle)}")
        curve = " ".join(f"{100 * steps[s]['mAP']:.1f}" for s in sorted(steps))
        done = "" if any(r.get("kind") == "final" for r in recs) else " (running)"
        lines.append(
            f"| {name}{done} | {max(steps)} | {curve} | {oracle}: {best:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    # the interval count only where some run has per-query records (and says over how many)
    foot = [
        f"{n[0]}/{n[2]} within 1, {n[1]}/{n[2]} within 2"
        + (f", {n[4]}/{n[5]} within the interval" if intervals else "")
        for n in near.values()
    ]
    src = [f"{n[3]}" for n in near.values()]
    lines.append("| **all runs** | | | | " + " | ".join(foot) + " |")
    lines.append("| source model kept where adaptation helped | | | | " + " | ".join(src) + " |")
    return "\n".join(lines)


def own_table(names: list[str]) -> str:
    """Markdown: per run of an own_cameras preset, the step it kept (its rule and patience,
    as it ran) against the best step of every run of the same method on the same target
    (any schedule, any clustering: the oracle over all of them)."""
    by_name = {r.name: r for r in RUNS}

    def method(run: U.Run) -> str:
        return run.config.split("/")[0]

    lines = [
        "| run | steps run | mAP by step | kept (step: mAP) | best step of any run of the "
        "method on this target (run, step: mAP) | kept - best |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        recs = _records(name)
        steps = _steps(recs)
        if not by_name[name].config.endswith("own_cameras_cpu.yaml") or len(steps) < 2:
            continue
        state = [r for r in recs if r.get("kind") == "step"]
        kept = state[-1].get("best_step")
        group = by_name[name].group
        best = max(
            (
                (100 * r["mAP"], other, s)
                for other in (
                    n
                    for n, r in by_name.items()
                    if r.group == group and method(r) == method(by_name[name])
                )
                for s, r in _steps(_records(other)).items()
            ),
            default=None,
        )
        if kept is None or best is None:
            continue
        curve = " ".join(f"{100 * steps[s]['mAP']:.1f}" for s in sorted(steps))
        k = 100 * steps[kept]["mAP"]
        lines.append(
            f"| {name} | {max(steps)} | {curve} | {kept}: {k:.1f} | {best[1]}, {best[2]}: "
            f"{best[0]:.1f} | {k - best[0]:+.1f} |"
        )
    return "\n".join(lines)


def presets_check() -> str:
    """Markdown: on every committed Market <-> Duke run record (``uda_runs``), the step the
    benchmark presets' rule keeps without patience and with patience 2 (their new default),
    and the mAP of each: patience changes a figure only where the two steps differ."""
    lines = [
        "| run | steps | agreement: step (mAP) | agreement + patience 2: step (mAP) |",
        "|---|---|---|---|",
    ]
    same = total = 0
    for folder in sorted((ROOT / "benchmarks" / "results" / "uda_runs").iterdir()):
        path = folder / "metrics.jsonl"
        if not path.is_file():
            continue
        recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        steps = _steps(recs)
        if len(steps) < 2 or not any(r.get("kind") == "select" for r in recs):
            continue
        a, b = pick_step(recs, "agreement"), pick_step(recs, "agreement", 2)
        total, same = total + 1, same + (a == b)
        cell = [f"{s} ({100 * steps[s]['mAP']:.1f})" if s in steps else "-" for s in (a, b)]
        lines.append(f"| {folder.name} | {max(steps)} | {cell[0]} | {cell[1]} |")
    lines.append(f"| **same step** | | {same}/{total} | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help="run names containing this")
    ap.add_argument("--list", action="store_true", help="print the queue and exit")
    ap.add_argument("--table", action="store_true", help="print the rules x runs table and exit")
    ap.add_argument(
        "--presets-check",
        action="store_true",
        help="print the Market <-> Duke records' step with and without patience 2, and exit",
    )
    ap.add_argument(
        "--redo",
        action="store_true",
        help="run again the finished runs whose records have no per-query APs (made before "
        "2026-12-07), replacing their records, so that the table shows each gap's interval",
    )
    args = ap.parse_args()
    if args.presets_check:
        print(presets_check())
        return 0
    runs = [r for r in RUNS if not args.only or any(s in r.name for s in args.only)]
    if args.table:
        print(rule_table([r.name for r in runs]))
        print()
        print(own_table([r.name for r in runs]))
        return 0
    if args.list:
        for r in runs:
            t = U.wall_time(r, RECORDS) / 60
            print(f"{U.status(r, RECORDS):8s} {t:6.1f} min  {r.name:22s} {' '.join(r.overrides)}")
        return 0
    for name, cams in SUBSETS.items():
        if any(name in " ".join(r.overrides) for r in runs):
            duke_subset(name, cams)
    for r in runs:
        if not (U.needs_running(r, RECORDS) or (args.redo and _without_per_query(r))):
            continue
        if U.execute(r, RECORDS) != 0:
            print(f"{r.name} failed: fix it, then run the queue again (it resumes)", flush=True)
            return 1
        rescore(r.name)
    return 0


def _without_per_query(run: U.Run) -> bool:
    """Finished in an earlier checkout (only its records are here), before per-query APs."""
    recorded = U.status(run, RECORDS) == "recorded"
    return recorded and not any(r.get("kind") == "per_query" for r in _records(run.name))


def rescore(name: str) -> int:
    """``selection_scores.py name``: the rules the loop does not record, from the kept models."""
    script = ROOT / "benchmarks" / "selection_scores.py"
    return subprocess.run([sys.executable, str(script), name], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
