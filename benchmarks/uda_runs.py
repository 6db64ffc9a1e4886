"""The real-data runs behind BENCHMARKS.md's adaptation tables, one queue, resumable.

    python benchmarks/uda_runs.py --list               # the runs and where each stands
    python benchmarks/uda_runs.py                      # run every unfinished one, in order
    python benchmarks/uda_runs.py --only msplr_m2d     # those whose name contains a string

Each run is an ``adaptreid train`` / ``adapt`` command on the CPU presets (MobileNetV2,
Market-1501 <-> DukeMTMC-reID in ../shared). A run folder that holds a checkpoint is continued
with ``--resume``; a finished one (its ``final`` record written) is skipped, so the queue can be
killed at any moment and started again, in this session or the next. Every command runs under
the shared lock of benchmarks/README.md, and its wall time (the lock's wait left out) is
added to
``runs/<name>/wall_time.json`` (one entry per invocation: a resumed run's total is their sum).

Run folders are not committed (checkpoints, pictures) and a new checkout starts without them,
so after every invocation the run's records (``metrics.jsonl``, ``config.yaml``,
``wall_time.json``: a few kB of text) are copied to ``benchmarks/results/uda_runs/<name>/``,
which is committed. The tables read either place. An adaptation run whose records hold its
``final`` record is done even without its folder; a source run is trained again when its
checkpoint is missing, because the adaptation runs start from it.
Tables: ``python benchmarks/uda_tables.py``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from adaptreid.runtime.precision import cpu_model

ROOT = Path(__file__).resolve().parents[1]
LOCK = "/tmp/adaptreid-heavy.lock"
M2D, D2M = "market1501_to_dukemtmc_cpu.yaml", "dukemtmc_to_market1501_cpu.yaml"
#: the source model in ../shared/checkpoints (see its README), so that a run need not train it
SHARED_M = "../shared/checkpoints/source_market1501_mobilenet_cpu.pt"
#: the BNNeck source models of the PAST tries (the PAST presets start from the PCB ones)
BNNECK_M = "adapt.init_checkpoint=runs/source_market1501_mobilenet_cpu/checkpoints/best.pt"
BNNECK_D = "adapt.init_checkpoint=runs/source_dukemtmc_mobilenet_cpu/checkpoints/best.pt"


@dataclass
class Run:
    name: str
    command: str  # train | adapt
    config: str
    overrides: list[str] = field(default_factory=list)
    group: str = ""
    #: (path, argv): a command that makes an input the run reads, run first when path is missing
    prepare: tuple[str, list[str]] | None = None

    def argv(self, resume: bool) -> list[str]:
        cmd = [str(ROOT / ".venv" / "bin" / "adaptreid"), self.command, "--config", self.config]
        cmd += ["-q", *self.overrides, f"name={self.name}"]
        return cmd + (["--resume"] if resume else [])


#: PAST's stages are 2 epochs on the CPU at the paper's learning rates (the authors' script: 40
#: epochs, with every loss weighted 0.1, i.e. 2x the CPU stage's lr x steps): every rate x10
PAST_LR10 = [
    "method.lr_trunk_conservative=1e-3",
    "method.lr_embedding_conservative=2e-3",
    "method.lr_classifier_promoting=1e-2",
    "method.lr_rest_promoting=5e-4",
]


#: DukeMTMC-reID as it travels to a lent GPU (pack_target.py: 128x64, JPEG quality 70), here
Q70_DUKE = "runs/data_q70/dukemtmc"
PACK_Q70 = (
    f"{Q70_DUKE}/DukeMTMC-reID",
    [
        sys.executable,
        "benchmarks/device/pack_target.py",
        "../shared/data/dukemtmc/DukeMTMC-reID",
        f"{Q70_DUKE}/DukeMTMC-reID",
        "70",
    ],
)


#: CAP's camera-aware proxy memory (Wang et al., AAAI 2021) with its tau and momentum
CAP = ["method.memory=camera_proxy", "method.temperature=0.07", "method.momentum=0.2"]
#: the three camera switches over 20 steps (x0.1 after 15): the ``*_camera_cpu.yaml`` presets
CAMERA_20 = [
    "pseudo.camera_norm=true",
    "pseudo.select=true",
    *CAP,
    "adapt.max_steps=20",
    "optim.milestones=[15]",
]


def _seeds(prefix: str, config: str, group: str) -> list[Run]:
    return [Run(f"{prefix}_seed{s}", "adapt", config, [f"seed={s}"], group) for s in (1, 2)]


#: in priority order: sources, headline rows, ablations, seeds
RUNS: list[Run] = [
    Run("source_market1501_mobilenet_cpu", "train", "source/market1501_mobilenet_cpu.yaml"),
    Run("source_dukemtmc_mobilenet_cpu", "train", "source/dukemtmc_mobilenet_cpu.yaml"),
    # the PAST presets' starts (issue 29: PCB models trained on the source, as the paper)
    Run("source_market1501_pcb_cpu", "train", "source/market1501_pcb_cpu.yaml"),
    Run("source_dukemtmc_pcb_cpu", "train", "source/dukemtmc_pcb_cpu.yaml"),
    Run("msplr_market1501_to_dukemtmc_cpu", "adapt", f"msplr/{M2D}", group="table1"),
    Run("msplr_dukemtmc_to_market1501_cpu", "adapt", f"msplr/{D2M}", group="table1"),
    Run("past_market1501_to_dukemtmc_cpu", "adapt", f"past/{M2D}", group="table1"),
    Run("past_dukemtmc_to_market1501_cpu", "adapt", f"past/{D2M}", group="table1"),
    Run("cc_market1501_to_dukemtmc_cpu", "adapt", f"cluster_contrast/{M2D}", group="table1"),
    Run("cc_dukemtmc_to_market1501_cpu", "adapt", f"cluster_contrast/{D2M}", group="table1"),
    Run(
        "cc_dukemtmc_unsupervised_cpu",
        "adapt",
        "cluster_contrast/dukemtmc_unsupervised_cpu.yaml",
        [],
        "cc",
    ),
    Run(
        "cc_market1501_unsupervised_cpu",
        "adapt",
        "cluster_contrast/market1501_unsupervised_cpu.yaml",
        [],
        "cc",
    ),
    # issue 26 item 3: the best recipe (MSPLR, its CPU schedule) fully unsupervised, from the
    # ImageNet weights alone
    Run(
        "msplr_market1501_unsupervised_cpu",
        "adapt",
        "msplr/market1501_unsupervised_cpu.yaml",
        ["adapt.max_steps=6"],  # measured with 6 steps, before the preset took 10
        "unsup26",
    ),
    Run(
        "msplr_dukemtmc_unsupervised_cpu",
        "adapt",
        "msplr/dukemtmc_unsupervised_cpu.yaml",
        [],
        "unsup26",
    ),
    # ... and with 10 steps (the Market preset's since): from ImageNet features the label-free
    # eps keeps 3% of Market at step 1 and the kept portion grows by a few points a step, so 6
    # steps stop mid-climb
    Run(
        "msplr_market1501_unsupervised_10",
        "adapt",
        "msplr/market1501_unsupervised_cpu.yaml",
        ["adapt.max_steps=10"],
        "unsup26",
    ),
    # PAST closes ~36% of the gap with the paper's settings: tries the evidence points to
    # (impure HDBSCAN clusters without camera normalisation; SGD at the paper's small learning
    # rates for a stage 20x shorter than the authors' 40 epochs)
    # (the tries ran from the BNNeck source models, the PAST presets' start until issue 29 made
    # it the PCB source models: pinned here so that a rerun is the same try)
    Run("past_d2m_cn", "adapt", f"past/{D2M}", ["pseudo.camera_norm=true", BNNECK_D], "past_tries"),
    # the same try on Market -> Duke (its source model trains in 24-36 min, Duke's in 40-80)
    Run("past_m2d_cn", "adapt", f"past/{M2D}", ["pseudo.camera_norm=true", BNNECK_M], "past_tries"),
    # the learning-rate try on Market -> Duke (its source trains in one session with the run),
    # alone and with camera normalisation (alone it moved the mAP by +0.7: not run on D -> M)
    Run("past_m2d_lr10", "adapt", f"past/{M2D}", [*PAST_LR10, BNNECK_M], "past_tries"),
    Run(
        "past_m2d_cn_lr10",
        "adapt",
        f"past/{M2D}",
        ["pseudo.camera_norm=true", *PAST_LR10, BNNECK_M],
        "past_tries",
    ),
    # PAST from a PCB source model (Table 1's "PCB (DT)" start) instead of a new PCB head on
    # the BNNeck source's trunk
    Run(
        "past_m2d_pcbsrc",
        "adapt",
        f"past/{M2D}",
        ["adapt.init_checkpoint=runs/source_market1501_pcb_cpu/checkpoints/best.pt"],
        "past_tries",
    ),
    # the two that moved PAST most, together: camera normalisation from the PCB source
    Run(
        "past_m2d_cn_pcbsrc",
        "adapt",
        f"past/{M2D}",
        [
            "pseudo.camera_norm=true",
            "adapt.init_checkpoint=runs/source_market1501_pcb_cpu/checkpoints/best.pt",
        ],
        "past_tries",
    ),
    # issue 29: PAST with the released code's per-part cosine reading of CTL / RTL (now the
    # presets' default), from the shared BNNeck source model and then from a PCB source model
    Run("past_m2d_pp", "adapt", f"past/{M2D}", [f"adapt.init_checkpoint={SHARED_M}"], "past29"),
    Run(
        "past_m2d_pp_pcbsrc",
        "adapt",
        f"past/{M2D}",
        ["adapt.init_checkpoint=runs/source_market1501_pcb_cpu/checkpoints/best.pt"],
        "past29",
    ),
    Run(
        "past_d2m_pp_pcbsrc",
        "adapt",
        f"past/{D2M}",
        ["adapt.init_checkpoint=runs/source_dukemtmc_pcb_cpu/checkpoints/best.pt"],
        "past29",
    ),
    # the preset without RTL: CTL alone beat CTL + RTL (27.5 against 25.7) at 0.44x the time
    Run("past_m2d_no_rtl", "adapt", f"past/{M2D}", ["method.use_rtl=false"], "past29"),
    # issue 26: cluster contrast from the shared source model, today's preset, then each camera
    # switch on its own (eq. 4 camera normalisation, >= 2-camera cluster selection, CAP's
    # camera-aware proxy memory at CAP's tau 0.07 / momentum 0.2), then all three
    Run(
        "cc_m2d", "adapt", f"cluster_contrast/{M2D}", [f"adapt.init_checkpoint={SHARED_M}"], "cc26"
    ),
    Run(
        "cc_m2d_cn",
        "adapt",
        f"cluster_contrast/{M2D}",
        [f"adapt.init_checkpoint={SHARED_M}", "pseudo.camera_norm=true"],
        "cc26",
    ),
    Run(
        "cc_m2d_sel",
        "adapt",
        f"cluster_contrast/{M2D}",
        [f"adapt.init_checkpoint={SHARED_M}", "pseudo.select=true"],
        "cc26",
    ),
    Run(
        "cc_m2d_cap",
        "adapt",
        f"cluster_contrast/{M2D}",
        [f"adapt.init_checkpoint={SHARED_M}", *CAP],
        "cc26",
    ),
    Run(
        "cc_m2d_cn_sel_cap",
        "adapt",
        f"cluster_contrast/{M2D}",
        [
            f"adapt.init_checkpoint={SHARED_M}",
            "pseudo.camera_norm=true",
            "pseudo.select=true",
            *CAP,
        ],
        "cc26",
    ),
    # the three switches at MSPLR's wall time (item 1: equal wall time on one machine): 20 steps
    # of one pass each, x0.1 after step 15 (the preset's proportions: 8 steps, x0.1 after 6).
    # With the switches a step took 77-91 s on a Zen 5 (a first 12-step try, stopped at step 6
    # as it would have ended at 18 min), MSPLR's preset 29-30 min there
    Run(
        "cc_m2d_cn_sel_cap_20",
        "adapt",
        f"cluster_contrast/{M2D}",
        [
            f"adapt.init_checkpoint={SHARED_M}",
            *CAMERA_20,
        ],
        "cc26",
    ),
    # ... with the looser giant-cluster guard of cc_d2m_cn_sel_cap_20_giant10 (below)
    Run(
        "cc_m2d_cn_sel_cap_20_giant10",
        "adapt",
        f"cluster_contrast/{M2D}",
        [
            f"adapt.init_checkpoint={SHARED_M}",
            *CAMERA_20,
            "pseudo.giant_factor=10",
        ],
        "cc26",
    ),
    # MSPLR's preset from the same shared source: the equal-wall-time pair for the cc26 runs on
    # one machine (and issue 27's CPU reading: fp32 where amp auto picks it, original images)
    Run("msplr_m2d", "adapt", f"msplr/{M2D}", [f"adapt.init_checkpoint={SHARED_M}"], "cc26"),
    # issue 27 item 5: the same run on the images the lent GPU got (128x64, JPEG q70), on this
    # CPU, to separate the recompression from the GPU's kernels in the GPU's 3 mAP gap
    Run(
        "msplr_m2d_q70",
        "adapt",
        f"msplr/{M2D}",
        [f"adapt.init_checkpoint={SHARED_M}", f"data.target_root={Q70_DUKE}"],
        "cpu_gpu27",
        prepare=PACK_Q70,
    ),
    # issue 27 item 1 (15 min on a Zen 5-class 2-core machine): the preset's schedule halved,
    # 6 steps x 2 epochs (one at the base rate, one at x0.1) without the frozen and warm-up
    # epochs, every step still evaluated so that the curve shows where the mAP goes
    Run(
        "msplr_m2d_short",
        "adapt",
        f"msplr/{M2D}",
        [
            f"adapt.init_checkpoint={SHARED_M}",
            "adapt.epochs_per_step=2",
            "optim.warmup_epochs=0",
            "optim.milestones=[1]",
            "train.freeze_epochs=0",
        ],
        "fast27",
    ),
    # ... and all three Duke -> Market (the preset's Duke source: source_dukemtmc_mobilenet_cpu)
    Run(
        "cc_d2m_cn_sel_cap",
        "adapt",
        f"cluster_contrast/{D2M}",
        ["pseudo.camera_norm=true", "pseudo.select=true", *CAP],
        "cc26",
    ),
    Run(
        "cc_d2m_cn_sel_cap_20",
        "adapt",
        f"cluster_contrast/{D2M}",
        [
            *CAMERA_20,
        ],
        "cc26",
    ),
    # ... and with a floor on the kept portion (pseudo.kept_never_shrinks): the label-free eps
    # settled at 0.175-0.35 there and the portion kept swung between 27% and 50% from step 3
    # on (cc_d2m_cn_sel_cap_20's labels records)
    Run(
        "cc_d2m_cn_sel_cap_20_floor",
        "adapt",
        f"cluster_contrast/{D2M}",
        [
            *CAMERA_20,
            "pseudo.kept_never_shrinks=true",
        ],
        "cc26",
    ),
    # ... the floor never bound there: the giant-cluster guard (largest cluster > 5x the
    # median) left out every eps above 0.3 (a 46-image largest cluster against a median of 9 on
    # the step-20 model's sweep), so a looser guard, 10x
    Run(
        "cc_d2m_cn_sel_cap_20_giant10",
        "adapt",
        f"cluster_contrast/{D2M}",
        [
            *CAMERA_20,
            "pseudo.giant_factor=10",
        ],
        "cc26",
    ),
    # ... and each switch alone D -> M (the preset's 8 steps), as cc_m2d_cn / cc_m2d_sel
    Run("cc_d2m_cn", "adapt", f"cluster_contrast/{D2M}", ["pseudo.camera_norm=true"], "cc26"),
    Run("cc_d2m_sel", "adapt", f"cluster_contrast/{D2M}", ["pseudo.select=true"], "cc26"),
    Run("cc_d2m_cap", "adapt", f"cluster_contrast/{D2M}", CAP, "cc26"),
    # MSPLR Duke -> Market from the same Duke source, on the same machine as the cc_d2m runs
    Run("msplr_d2m", "adapt", f"msplr/{D2M}", [], "cc26"),
    # issue 26, the best recipe adaptreid can make: MSPLR (labels and eq. 5 losses) + CAP's
    # camera-aware proxy memory term, from the shared source model M -> D as the cc26 runs
    Run(
        "best_m2d_memory",
        "adapt",
        "msplr/market1501_to_dukemtmc_memory_cpu.yaml",
        [f"adapt.init_checkpoint={SHARED_M}"],
        "best26",
    ),
    Run("best_d2m_memory", "adapt", "msplr/dukemtmc_to_market1501_memory_cpu.yaml", [], "best26"),
    *_seeds("msplr_m2d", f"msplr/{M2D}", "seeds"),
    # issue 26 item 2: the best recipe's (MSPLR's) seed spread Duke -> Market too
    *_seeds("msplr_d2m", f"msplr/{D2M}", "seeds"),
    # MSPLR Table 3 (each component added in turn) and Table 4 (k-means), Market -> Duke
    Run(
        "msplr_m2d_da",
        "adapt",
        f"msplr/{M2D}",
        ["adapt.max_steps=1", "pseudo.select=false", "pseudo.camera_norm=false"],
        "msplr_t3",
    ),
    Run(
        "msplr_m2d_pl",
        "adapt",
        f"msplr/{M2D}",
        ["pseudo.select=false", "pseudo.camera_norm=false"],
        "msplr_t3",
    ),
    Run("msplr_m2d_sel", "adapt", f"msplr/{M2D}", ["pseudo.camera_norm=false"], "msplr_t3"),
    Run(
        "msplr_m2d_kmeans",
        "adapt",
        f"msplr/{M2D}",
        ["pseudo.method=kmeans", "pseudo.l2_after=false"],
        "msplr_t4",
    ),
    # PAST Table 1 (CTL / RTL / CTL + RTL / + promoting) and Table 2 (k-means / DBSCAN)
    Run(
        "past_m2d_ctl",
        "adapt",
        f"past/{M2D}",
        ["method.use_rtl=false", "method.use_promoting=false"],
        "past_t1",
    ),
    Run(
        "past_m2d_rtl",
        "adapt",
        f"past/{M2D}",
        ["method.use_ctl=false", "method.use_promoting=false"],
        "past_t1",
    ),
    Run("past_m2d_ctl_rtl", "adapt", f"past/{M2D}", ["method.use_promoting=false"], "past_t1"),
    Run(
        "past_m2d_kmeans",
        "adapt",
        f"past/{M2D}",
        ["pseudo.method=kmeans", "pseudo.kmeans_k=751"],
        "past_t2",
    ),
    Run(
        "past_m2d_dbscan",
        "adapt",
        f"past/{M2D}",
        ["pseudo.method=dbscan", "pseudo.auto_eps=true"],
        "past_t2",
    ),
    # seed 0 by name too: the preset's own record (past_market1501_to_dukemtmc_cpu) is an older
    # reading's run on another machine, so the three seeds of the current preset run side by side
    Run("past_m2d_seed0", "adapt", f"past/{M2D}", ["seed=0"], "seeds"),
    *_seeds("past_m2d", f"past/{M2D}", "seeds"),
]


#: the committed copy of each run's records (see the module docstring)
RECORDS = ROOT / "benchmarks" / "results" / "uda_runs"
RECORD_FILES = ("metrics.jsonl", "config.yaml", "wall_time.json")


def _finished(folder: Path) -> bool:
    metrics = folder / "metrics.jsonl"
    return metrics.is_file() and '"kind": "final"' in metrics.read_text()


def _records_dir(records: Path | None) -> Path:
    """``records`` or, when None, the module's ``RECORDS`` read at call time (tests patch it)."""
    return RECORDS if records is None else records


def status(run: Run, records: Path | None = None) -> str:
    """done (run folder finished) | started (a checkpoint to resume) | recorded (finished in
    an earlier checkout: only its committed records are here) | new"""
    folder = ROOT / "runs" / run.name
    if _finished(folder):
        return "done"
    if (folder / "checkpoints" / "last.pt").is_file():
        return "started"
    if _finished(_records_dir(records) / run.name):
        return "recorded"
    return "new"


def needs_running(run: Run, records: Path | None = None) -> bool:
    state = status(run, records)
    return state in ("new", "started") or (state == "recorded" and run.command == "train")


def save_records(run: Run, records: Path | None = None) -> None:
    """Copy the run's records to the committed ``records/<name>/``."""
    folder, dest = ROOT / "runs" / run.name, _records_dir(records) / run.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)


def wall_time(run: Run, records: Path | None = None) -> float:
    for folder in (ROOT / "runs" / run.name, _records_dir(records) / run.name):
        path = folder / "wall_time.json"
        if path.is_file():
            return sum(e["seconds"] for e in json.loads(path.read_text()))
    return 0.0


def prepare(run: Run) -> int:
    """Run ``run.prepare``'s command when its path is missing; its exit code (0 when not run)."""
    if run.prepare is None or (ROOT / run.prepare[0]).exists():
        return 0
    print(f"[{time.strftime('%H:%M:%S')}] {shlex.join(run.prepare[1])}", flush=True)
    return subprocess.run(run.prepare[1], cwd=ROOT).returncode


def execute(run: Run, records: Path | None = None) -> int:
    import fcntl

    if prepare(run) != 0:
        print(f"{run.name}: preparing {run.prepare[0]} failed", flush=True)
        return 1
    resume = status(run, records) == "started"
    argv = run.argv(resume)
    print(f"[{time.strftime('%H:%M:%S')}] {shlex.join(argv)}", flush=True)
    waited = time.time()
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the shared lock; its wait is not the run's time
        t0 = time.time()
        code = subprocess.run(argv, cwd=ROOT).returncode
        seconds = time.time() - t0
    folder = ROOT / "runs" / run.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "wall_time.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    entries.append(
        {
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)),
            "seconds": round(seconds, 1),
            "lock_wait_s": round(t0 - waited, 1),
            "exit": code,
            "resume": resume,
            "command": shlex.join(run.argv(resume)),
            "machine": cpu_model(),
        }
    )
    path.write_text(json.dumps(entries, indent=1) + "\n")
    save_records(run, records)
    print(f"  exit {code} after {seconds / 60:.1f} min", flush=True)
    return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help="run names containing this")
    ap.add_argument("--name", action="append", default=[], help="the run of exactly this name")
    ap.add_argument("--list", action="store_true", help="print the queue and exit")
    ap.add_argument(
        "--save-records",
        action="store_true",
        help="copy the records of every run folder here to benchmarks/results/uda_runs and exit",
    )
    args = ap.parse_args()
    runs = [r for r in RUNS if not args.only or any(s in r.name for s in args.only)]
    if args.name:
        runs = [r for r in runs if r.name in args.name]
    if args.save_records:
        for r in runs:
            if (ROOT / "runs" / r.name / "metrics.jsonl").is_file():
                save_records(r)
                print(f"{status(r):8s} {r.name} -> {(RECORDS / r.name).relative_to(ROOT)}")
        return 0
    if args.list:
        for r in runs:
            print(
                f"{status(r):8s} {wall_time(r) / 60:6.1f} min  {r.name:28s} {r.config} "
                f"{' '.join(r.overrides)}"
            )
        return 0
    for r in runs:
        if not needs_running(r):
            continue
        if execute(r) != 0:
            print(f"{r.name} failed: fix it, then run the queue again (it resumes)", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
