"""What a method sees of the loop: :class:`LoopContext` (``method.ctx``, the loop's services)
and :class:`LoopState` (what the loop checkpoints after every epoch to resume inside a stage).

Kept apart from :mod:`adaptreid.engine.loop` so that a method imports these, never the loop
that calls it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.datasets import ReidDataset, Sample
from ..data.image_cache import ImageCache
from ..data.loaders import build_test_loader
from ..data.transforms import build_transforms
from ..models import ReidModel
from ..rundir.run import RunDir
from ..runtime.precision import Precision
from .builders import open_image_cache, train_loader
from .extract import Features, extract_features

log = logging.getLogger("adaptreid")

__all__ = ["LoopContext", "LoopState", "step_seed"]


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s samplers and draws, from the run's ``seed``."""
    return seed * 1000 + step


@dataclass
class LoopState:
    step: int = 0
    """Last step whose pseudo-labels exist (0: none yet)."""
    step_done: bool = True
    """Whether step ``step`` finished (trained and evaluated)."""
    stage: int = 0
    """Index of the stage being trained in step ``step``."""
    stage_begun: bool = False
    """Whether the method's ``begin_stage`` ran for that stage."""
    labels: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """The method's extra arrays of this step (numpy; e.g. PAST's ranking table)."""
    trainer: dict[str, Any] | None = None
    best_step: int = 0
    best_score: float = -math.inf
    stale: int = 0
    scored: int = -1
    """Last step whose model has its label-free score."""
    stopped: bool = False
    records: int = 0
    """Lines of metrics.jsonl when this state was saved (a resume cuts back to them)."""
    excluded: list[str] = field(default_factory=list)
    """Target train images left out as unreadable when this step's labels were made (the
    labels follow ``target.train`` without them; a resume leaves them out again)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """This step's time so far, per part (extract, distance, cluster, train, ...)."""
    holdout: dict[str, int] = field(default_factory=dict)
    """Held-back images (``adapt.holdout``): path -> step-1 cluster id; no step trains on them."""
    portion_kept: float = 0.0
    """Portion of the target images in this step's selected clusters, held-back images
    included (the ``labels`` record's; ``pseudo.max_kept_growth`` caps the next one's)."""

    def to_dict(self) -> dict[str, Any]:
        """Checkpointable (``weights_only`` loads take tensors, not numpy arrays)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["labels"] = (
            None if self.labels is None else torch.from_numpy(self.labels.astype(np.int64))
        )
        d["extra"] = {
            k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in self.extra.items()
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        d = dict(d)
        labels = d.pop("labels", None)
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        state = cls(**known)
        state.labels = None if labels is None else labels.numpy()
        state.extra = {  # a method's extra arrays come back as numpy arrays
            k: v.numpy() if torch.is_tensor(v) else v for k, v in (state.extra or {}).items()
        }
        state.seconds = dict(state.seconds or {})
        state.excluded = list(state.excluded or [])
        return state


@dataclass
class LoopContext:
    """What a method may use from the loop (``method.ctx``)."""

    cfg: Config
    device: torch.device
    target: ReidDataset
    run: RunDir
    verbose: bool
    amp: str = "none"
    channels_last: bool = False
    """Training precision (``train.amp``, resolved)."""
    extract_amp: str = "none"
    extract_channels_last: bool = False
    """Extraction / evaluation precision (``train.amp: auto`` probes it separately)."""
    true_pids: np.ndarray | None = None
    """Target train identities when known: label quality in the records only."""
    state: LoopState = field(default_factory=LoopState)
    bad_images: str = "skip"
    """``data.bad_images`` resolved for the target (``auto``: skip)."""
    image_cache_dir: str = ""
    """The run's image cache folder (:func:`~adaptreid.engine.builders.image_cache_dir`);
    ``""``: none, every pass decodes."""

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def seed(self) -> int:
        """The seed of this step's samplers and draws (``cfg.seed * 1000 + step``)."""
        return step_seed(self.cfg.seed, self.state.step)

    def image_cache(self) -> ImageCache | None:
        """The run's image cache at the input size (None with ``data.image_cache: none``):
        for a method that builds its own loader."""
        return open_image_cache(self.image_cache_dir, self.cfg.data.height, self.cfg.data.width)

    def train_loader(self, samples: list[Sample]):
        """A P x K loader over ``samples`` with ``cfg.data``'s augmentation (unreadable images
        dropped from their batch in skip mode; images from the run's image cache)."""
        return train_loader(
            self.cfg, samples, bad_images=self.bad_images, image_cache=self.image_cache()
        )

    def extract(self, model: ReidModel, *, normalize: bool, desc: str = "") -> Features:
        """Features of the target training images, in dataset order (test-time transform),
        L2-normalised (per part) when ``normalize``. In skip mode an unreadable image has no
        row: ``features.kept`` are the positions in ``target.train`` of the rows."""
        d = self.cfg.data
        loader = build_test_loader(
            self.target.train,
            build_transforms(d.height, d.width, train=False),
            d.test_batch_size,
            d.num_workers,
            bad_images=self.bad_images,
            image_cache=self.image_cache(),
        )
        feats = extract_features(
            model.to(self.device),
            loader,
            device=self.device,
            flip=self.cfg.adapt.extract_flip,
            normalize=normalize,
            precision=Precision(self.extract_amp, self.extract_channels_last),
            desc=desc or f"step {self.state.step} features",
            verbose=self.verbose,
        )
        self.run.note_bad(feats.dropped, desc or f"step {self.state.step} features")
        return feats

    def drop_unreadable(self, feats: Features) -> None:
        """Leave the images ``feats`` could not read out of ``target.train`` for the rest of
        the run (the next labels follow the shorter list)."""
        if len(feats.kept) == len(self.target.train):
            return
        gone = sorted(set(range(len(self.target.train))) - set(feats.kept.tolist()))
        self.state.excluded += [self.target.train[i].path for i in gone]
        keep = set(feats.kept.tolist())
        self.target.train = [x for i, x in enumerate(self.target.train) if i in keep]
        if self.true_pids is not None:
            self.true_pids = self.true_pids[feats.kept]

    def exclude(self, paths: list[str]) -> None:
        """Leave ``paths`` out of ``target.train`` (a resume: as when the labels were made)."""
        if not paths:
            return
        gone = set(paths)
        keep = [i for i, x in enumerate(self.target.train) if x.path not in gone]
        self.target.train = [self.target.train[i] for i in keep]
        if self.true_pids is not None:
            self.true_pids = self.true_pids[keep]
