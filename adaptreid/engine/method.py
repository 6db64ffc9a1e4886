"""The adaptation-method interface that the one loop (:mod:`adaptreid.engine.loop`) drives.

A method says only what is its own; the loop owns everything that is the same for every
method (steps and stages, target feature extraction, pseudo-labelling on rank 0 and its
broadcast, resume inside a stage, checkpoints, metric records, model selection, stopping).
One step of the loop::

    features = extract(model, target.train)                 # loop
    labels, extra = method.pseudo_labels(step_features)     # method, rank 0; loop broadcasts
    model = method.on_labels(model, labels, extra)          # method, every rank
    for stage in method.stages:                             # method's stage names
        model = method.begin_stage(stage, model, labels, extra)   # once (not on resume)
        spec = method.build_stage(stage, model, labels, extra)    # also on resume
        train spec.epochs epochs with spec's criterion / optimiser / loader / hooks  # loop
    evaluate, select, save                                   # loop

Adding a method: one file in ``adaptreid/methods/`` with an options dataclass (a
:class:`~adaptreid.config.MethodOptions` subclass) and an :class:`AdaptationMethod` subclass
registered with :func:`register_method`, one preset, its tests. See the README, "Add a
method".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..config import registered_method
from ..registry import METHOD_OPTIONS, METHODS
from .trainer import Stage, TrainHooks

if TYPE_CHECKING:
    from ..config import Config, MethodOptions
    from ..models import ReidModel
    from ..pseudo.labels import PseudoLabels
    from .context import LoopContext
    from .pseudo_step import StepFeatures

__all__ = [
    "AdaptationMethod",
    "Stage",
    "TrainHooks",
    "method_class",
    "register_method",
]


def register_method(cls: type[AdaptationMethod]) -> type[AdaptationMethod]:
    """Class decorator: make ``cls`` available as ``method: <cls.name>``, with its options
    dataclass ``cls.Options`` (registered here unless :mod:`adaptreid.method_options` has)."""
    if cls.name in METHOD_OPTIONS:
        if METHOD_OPTIONS.get(cls.name) is not cls.Options:
            raise KeyError(f"method {cls.name!r}: another options class is registered")
    else:
        METHOD_OPTIONS.register(cls.name)(cls.Options)
    METHODS.register(cls.name)(cls)
    return cls


def method_class(name: str) -> type[AdaptationMethod]:
    """The registered method ``name`` (``import adaptreid.methods`` registers the built-in
    ones; the engine never imports a method)."""
    return registered_method(name)


class AdaptationMethod:
    """Base class of the adaptation methods.

    Class attributes a method sets:

    * ``name``: what ``method: <name>`` selects;
    * ``Options``: its options dataclass (a :class:`~adaptreid.config.MethodOptions`);
    * ``normalize_features``: whether the target features handed to :meth:`pseudo_labels`
      are L2-normalised (per part for part models) or raw;
    * ``ignored``: config keys (or prefixes ending with ``.``) that the method does not
      read, each with the reason; ``adaptreid adapt`` refuses them when given;
    * ``reads_model``: ``model.*`` keys it reads although the network comes from
      ``adapt.init_checkpoint`` (e.g. PAST's new PCB head);
    * :meth:`unread_keys`: keys it does not read under a given config (e.g. DBSCAN's eps when
      it clusters with HDBSCAN); ``adaptreid adapt`` refuses them when not at their default.

    ``self.ctx`` (a :class:`~adaptreid.engine.context.LoopContext`) gives the loop's services:
    ``cfg``, ``device``, ``target``, ``train_loader(samples)``, ``extract(model, ...)``,
    ``step``, ``true_pids`` (analysis only).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = object
    normalize_features: ClassVar[bool] = False
    ignored: ClassVar[dict[str, str]] = {}
    reads_model: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config, ctx: LoopContext) -> None:
        self.validate(cfg)
        self.cfg = cfg
        self.opt: MethodOptions = cfg.method
        self.ctx = ctx

    # ------------------------------------------------------------------ the algorithm
    @property
    def stages(self) -> tuple[str, ...]:
        """The names of the training stages of one step, in order (may depend on options)."""
        return ("train",)

    @classmethod
    def validate(cls, cfg: Config) -> None:
        """Check the option values of ``cfg.method`` (raise
        :class:`~adaptreid.errors.ConfigError`); the loop calls it before anything else."""

    @classmethod
    def unread_keys(cls, cfg: Config) -> dict[str, str]:
        """Keys this method would not read under ``cfg`` and that are not at their default
        (:func:`adaptreid.config.non_default`), each with the reason. Default: none."""
        return {}

    def initial_model(self, model: ReidModel) -> ReidModel:
        """The model of step 0 (direct transfer), from the source checkpoint. Default: as is."""
        return model

    def pseudo_labels(self, feats: StepFeatures) -> tuple[PseudoLabels, dict[str, Any]]:
        """Pseudo-labels of the target training images from this step's features (runs on
        rank 0 only). Returns the labels and extra arrays the stages need (kept in the
        checkpoint, e.g. a neighbour table); the loop broadcasts both."""
        raise NotImplementedError

    def uses_jaccard(self) -> bool:
        """Whether :meth:`pseudo_labels` needs the step's Jaccard distance (then, under
        torch.distributed, every rank computes its share of it first). Default: when
        ``pseudo.*`` clusters on it."""
        p = self.cfg.pseudo
        return p.distance == "jaccard" and p.method != "kmeans"

    def ranking_width(self) -> int:
        """The ranks of PAST's ranking table (eq. 2) :meth:`pseudo_labels` will ask
        :meth:`StepFeatures.ranked` for (``2 eta``; 0, the default: none). The step's Jaccard
        pass then keeps that many euclidean neighbours too, so the table needs no search of
        its own."""
        return 0

    def on_labels(self, model: ReidModel, labels: np.ndarray, extra: dict) -> ReidModel:
        """After new pseudo-labels, on every rank (e.g. a new classifier). Default: as is."""
        return model

    def begin_stage(
        self, stage: str, model: ReidModel, labels: np.ndarray, extra: dict
    ) -> ReidModel:
        """Once before the first epoch of ``stage`` (not again on a resume inside it): e.g.
        PAST's eq. 7 classifier from cluster means. Default: as is."""
        return model

    def build_stage(
        self, stage: str, model: ReidModel, labels: np.ndarray, extra: dict
    ) -> Stage | None:
        """The trainer parts of ``stage`` (called again on a resume, so it must not change
        the model); None skips the stage."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def num_classes(labels: np.ndarray) -> int:
        return int(np.max(labels)) + 1 if len(labels) else 0
