"""A run folder: everything one train / adapt run writes, and what a resume reads back.

Layout::

    runs/<name>/
      config.yaml        the resolved config (what was really run)
      log.txt            the log (appended to on resume)
      metrics.jsonl      one JSON record per line: {"step": ..., "epoch": ..., ...}
      checkpoints/last.pt  the newest state, for resuming (atomic writes)
      checkpoints/best.pt  the best model so far (by the run's selection metric)
      report.md, plots    written by the report step

Only rank 0 writes. A killed run resumes from ``checkpoints/last.pt``: metric records written
after that checkpoint are dropped, so the history has no duplicates. Source training and
adaptation write the same checkpoint format (:meth:`RunDir.save_state`, version 2) and resume
the same way (:meth:`RunDir.resume_state`); unreadable images skipped anywhere in the run are
noted once each in ``bad_images.json`` (:meth:`RunDir.note_bad`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_from_saved, save_config, to_dict
from ..data.bad_images import BadImageLog
from ..errors import ConfigError
from ..runtime import distributed as D
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

#: The checkpoint format every run writes. Version 1: source training's checkpoints before the
#: format was shared (no record count; still resumed, by epoch).
CHECKPOINT_VERSION = 2

log = logging.getLogger("adaptreid")


def start_name(init_checkpoint: str | None, pretrained: str | None = None) -> str:
    """What an adaptation run's step 0 is, for its log, report and plots: the direct transfer
    of its source model, or, with no ``adapt.init_checkpoint`` (fully unsupervised), the
    network's own starting weights (``model.pretrained``'s file, or a random initialisation)."""
    if init_checkpoint:
        return "direct transfer"
    if pretrained:
        return f"no source model: the pretrained weights of {Path(str(pretrained)).name}"
    return "no source model: random initial weights"


def start_of(cfg: dict[str, Any]) -> str:
    """:func:`start_name` of an adaptation run folder's ``config.yaml`` (as a dict): a run
    whose ``adapt.init_checkpoint`` is empty started without a source model; one that names
    a checkpoint, or a config without the key, is a direct transfer."""
    adapt = cfg.get("adapt") or {}
    if adapt.get("init_checkpoint", "?") != "":
        return "direct transfer"
    return start_name("", (cfg.get("model") or {}).get("pretrained"))


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        self._tb = None
        self._records: int | None = None
        self._bad: BadImageLog | None = None

    # ------------------------------------------------------------------ files
    @property
    def last(self) -> Path:
        return self.ckpt_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.ckpt_dir / "best.pt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    def has_checkpoint(self) -> bool:
        return self.last.is_file()

    # ------------------------------------------------------------------ setup
    @classmethod
    def prepare(cls, cfg: Config, *, resume: bool) -> tuple[RunDir, Config]:
        """Create (or reopen, with ``resume``) the folder ``cfg.output_dir / cfg.name``.

        A new run refuses a folder that already holds a checkpoint (so nothing is overwritten);
        a resumed run takes its config from the folder, not from the command line, except a
        larger ``adapt.max_steps`` when that is the only difference (:func:`_extends`)."""
        run = cls(Path(cfg.output_dir) / cfg.name)
        if resume:
            if not run.config_file.is_file():
                raise ConfigError(
                    f"--resume: {run.path} has no config.yaml; nothing to resume (start the run "
                    "without --resume)"
                )
            import yaml

            saved = config_from_saved(yaml.safe_load(run.config_file.read_text()))
            changed = _diff(to_dict(saved), to_dict(cfg))
            if _extends(saved, cfg, changed):
                log.info(
                    "extending %s from %d to %d adaptation steps (adapt.max_steps)",
                    run.path,
                    saved.adapt.max_steps,
                    cfg.adapt.max_steps,
                )
                saved.adapt.max_steps = cfg.adapt.max_steps
                if D.is_main():
                    save_config(saved, run.config_file)
            elif changed:
                log.warning(
                    "resuming with the config saved in %s; ignoring differences: %s",
                    run.config_file,
                    ", ".join(changed[:8]),
                )
            cfg = saved
        elif run.has_checkpoint():
            raise ConfigError(
                f"{run.path} already holds a run with a checkpoint. Continue it with --resume, "
                f"or choose another name (name=...) or output_dir"
            )
        if D.is_main():
            run.path.mkdir(parents=True, exist_ok=True)
            run.ckpt_dir.mkdir(exist_ok=True)
            for stale in run.ckpt_dir.glob(".*.tmp"):  # left by a kill during a write
                log.info("removing %s (an interrupted checkpoint write)", stale.name)
                stale.unlink()
            if not resume:
                save_config(cfg, run.config_file)
            run._attach_log_file()
            if cfg.train.tensorboard:
                run._open_tensorboard()
        D.barrier()
        return run, cfg

    def _attach_log_file(self) -> None:
        root = logging.getLogger("adaptreid")
        target = str((self.path / "log.txt").resolve())
        if any(getattr(h, "baseFilename", None) == target for h in root.handlers):
            return
        h = logging.FileHandler(target)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(h)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError(
                "train.tensorboard=true needs the tensorboard package (pip install tensorboard); "
                "metrics.jsonl is written either way"
            ) from e
        self._tb = SummaryWriter(str(self.path / "tb"))

    # ------------------------------------------------------------------ metrics
    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON record (rank 0 only), flushed to disk."""
        if not D.is_main():
            return
        count = self.num_records()
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records = count + 1
        if self._tb is not None:
            self._write_tensorboard(record)

    def _write_tensorboard(self, record: dict[str, Any]) -> None:
        """Scalars under ``<kind>/<name>``, indexed by a global epoch / step counter."""
        kind = record.get("kind", "record")
        index = int(record.get("step", 0)) * 1000 + int(record.get("epoch", 0))
        for key, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._tb.add_scalar(f"{kind}/{key}", value, index)
        self._tb.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        out = []
        for line in self.metrics_file.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: drop it
                continue
        return out

    def num_records(self) -> int:
        """How many records metrics.jsonl holds (counted once, then kept up to date)."""
        if self._records is None:
            self._records = len(self.read_metrics())
        return self._records

    def truncate_records(self, n: int) -> None:
        """Keep the first ``n`` records (a resume drops what came after its checkpoint)."""
        if D.is_main() and self.metrics_file.is_file():
            self._rewrite(self.read_metrics()[: int(n)])

    def _keep_records(self, keep: Any) -> None:
        """Keep only the records for which ``keep(record)`` is true (version-1 resume)."""
        if D.is_main() and self.metrics_file.is_file():
            self._rewrite([r for r in self.read_metrics() if keep(r)])

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        tmp = self.metrics_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in records))
        os.replace(tmp, self.metrics_file)
        self._records = len(records)

    # ------------------------------------------------------------------ checkpoints
    def save(self, state: dict[str, Any], *, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt``). ``best.pt`` goes first: a kill between the two
        writes leaves the previous ``last.pt``, whose state does not claim the new best yet,
        so a resume redoes the choice instead of trusting a ``best.pt`` that was never
        written."""
        if not D.is_main():
            return
        if best:
            save_checkpoint(state, self.best)
        save_checkpoint(state, self.last)

    def save_step_model(
        self,
        step: int,
        model: Any,
        cfg: Config,
        *,
        labels: Any = None,
        paths: Any = None,
        **parts: Any,
    ) -> Path:
        """``steps/step_<step>.pt`` (``adapt.keep_steps``), atomically: a weights-only checkpoint
        of the step's model in the format of :meth:`save_state` (it loads wherever a
        checkpoint is accepted), with the pseudo-labels it was trained on and the image paths
        they follow when given."""
        state = {
            "format": "adaptreid-checkpoint",
            "version": CHECKPOINT_VERSION,
            "arch": model.arch,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "input_size": [cfg.data.height, cfg.data.width],
            "config": to_dict(cfg),
            **parts,
        }
        if labels is not None:
            state["labels"] = torch.as_tensor(labels, dtype=torch.int64)
            state["paths"] = list(paths)
        path = self.path / "steps" / f"step_{step}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(state, path)
        return path

    def load_last(self) -> dict[str, Any]:
        return load_checkpoint(self.last)

    def save_state(self, model: Any, cfg: Config, *, best: bool = False, **parts: Any) -> None:
        """Checkpoint the run in the one format of source training and adaptation: the model
        (with its ``arch``, so it rebuilds alone), the input size, the config, the RNG state
        and the number of metric records so far (a resume cuts ``metrics.jsonl`` back to
        them), plus ``parts``: the trainer's state, the loop's state, the method's name..."""
        self.save(
            {
                "format": "adaptreid-checkpoint",
                "version": CHECKPOINT_VERSION,
                "arch": model.arch,
                "model": model.state_dict(),
                "input_size": [cfg.data.height, cfg.data.width],
                "config": to_dict(cfg),
                "rng": rng_state(),
                "records": self.num_records(),
                **parts,
            },
            best=best,
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from ``state`` (:meth:`load_last`, once the model is rebuilt: rebuilding
        draws random numbers): the RNG state restored and ``metrics.jsonl`` cut back to the
        records written when it was saved. Older checkpoints still resume: adaptation's
        before the shared format kept the count in ``loop.records``; source training's
        version 1 had none, and keeps the epoch records up to its epoch, as it did then."""
        set_rng_state(state["rng"])
        n = state.get("records")
        if n is None and isinstance(state.get("loop"), dict):
            n = state["loop"].get("records")
        if n is not None:
            self.truncate_records(n)
        else:
            epoch = int(state.get("epoch", 0))
            self._keep_records(lambda r: r.get("kind") == "epoch" and r.get("epoch", 0) <= epoch)

    # ------------------------------------------------------------------ unreadable images
    @property
    def bad_log(self) -> BadImageLog:
        """The run's ``bad_images.json`` (loaded on first use; a resume keeps the list)."""
        if self._bad is None:
            self._bad = BadImageLog.load(self.path)
        return self._bad

    def note_bad(self, items, where: str) -> None:
        """Record unreadable images ``(index, path, reason)`` once each (``bad_images.json``,
        the report lists them) and log them."""
        if items and self.bad_log.add_many(items, where=where) and D.is_main():
            self.bad_log.save(self.path)
            for _, path, reason in items:
                log.warning("skipping unreadable image %s (%s) in %s", path, reason, where)


def _extends(saved: Config, cfg: Config, changed: list[str]) -> bool:
    """A resume whose command differs from the saved run in a larger ``adapt.max_steps`` only:
    the run goes on to that many steps (a finished run too; nothing else reads the number, so
    it ends as a run started with it would, from the saved state on)."""
    return (
        len(changed) == 1
        and changed[0].startswith("adapt.max_steps=")
        and cfg.adapt.max_steps > saved.adapt.max_steps
    )


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, prefix + k + ".")
        elif va != vb:
            out.append(f"{prefix}{k}={vb!r} (saved {va!r})")
    return out
