"""PAST: self-training with progressive augmentation (seed 003_75922616b51f33ff, Algorithm 1).

One iteration (``adapt.max_steps`` = I_max = 4 iterations, section 3.1)::

    Conservative stage
      3  extract features F of every target training image (per-part L2-normalised, PCB)
      4  k-reciprocal Jaccard distance (eq. 1) -> ranking score matrix D_R (eq. 2)
      5  HDBSCAN(D_R; S_min) -> pseudo-labels; outliers dropped -> T_U
      6  train on T_U with L_C = L_RTL + lambda L_CTL (eq. 3-5)
      7  extract features F_U of T_U
    Promoting stage
      9  new classifier, W_c = mean feature of cluster c (eq. 7)
      10 train on T_U with softmax cross-entropy (eq. 6)
    evaluate on the target query / gallery (cosine distance, section 3.1)

Model (section 3.1): PCB on a ResNet-50 trunk with last stride 1, 9 stripes, a 256-d embedding
per stripe (``model.head: pcb``, :mod:`adaptreid.models.pcb`). The run starts from a
source-trained checkpoint (``adapt.init_checkpoint``). If that checkpoint has another head
(e.g. a BNNeck model from ``adaptreid train``), its *trunk* is kept (the ``backbone.*``
weights; same backbone required) and the configured head is new: step 0 ("direct transfer")
evaluates the source model exactly as trained, iteration 1 clusters the features of that
model (Algorithm 1's M, "pre-trained" on S: a fresh head has learnt nothing yet), and the
head is swapped right after, before the conservative stage.

Optimisation (section 3.1): SGD, momentum 0.9, weight decay 5e-4, batch 64 (P x K), 384 x 128
input, flip-only augmentation. One optimiser per stage, rebuilt every iteration: conservative
1e-4 on the trunk ("fine-tune layers") and 2e-4 on the embedding layers (the head); promoting
1e-3 on the new classifier and 5e-5 on all other layers; "after 3 iterations, all learning
rates are multiplied by 0.1" (iteration 4 on). Constant within a stage.

Design decisions (the paper leaves them open):

* **RTL batches.** The conservative batch is a P x K pseudo-label batch of ``B`` anchors (the
  anchors CTL uses, as eq. 4 requires), and for every anchor one positive drawn uniformly from
  ranks ``1..eta`` of its D_R row and one negative from ``eta+1..2 eta``; the ``3 B`` images
  go through the network in one forward pass. Positives / negatives come from the whole
  target set T (D_R is computed on T), outliers included. The draw is made in the main
  process by :class:`RankingTripletBatchSampler` from ``(seed, epoch, rank, batch)``, so it
  is reproducible and a resumed run draws the same triplets. See
  :mod:`adaptreid.losses.past_loss`.
* **D_R beyond the stored Jaccard entries**: filled by euclidean order
  (:func:`adaptreid.pseudo.ranking.ranked_neighbors`).
* **Eq. 7 features**: by default the cluster means of the per-part L2-normalised features,
  i.e. of F_U extracted exactly as the features that were clustered (Algorithm 1 line 7 is the
  same extraction as line 3); ``past.classifier_init: raw`` uses un-normalised features.
* **HDBSCAN's S_min** ("minimum samples", 10, section 3.4) is HDBSCAN's ``min_samples``
  (``pseudo.min_samples``), as the authors' released code passes it; their smallest cluster
  is the library default, 5 (``pseudo.min_cluster_size``). (With ``min_cluster_size = 10``
  and ``min_samples`` = 10 too, weak source features chain into a few giant clusters.)
* **Epochs per stage** are not in the paper: ``past.conservative_epochs`` /
  ``past.promoting_epochs`` (40 each in the authors' released script).
* **Evaluation** once per iteration, after its last stage (``past.eval_after_conservative``
  adds one after the conservative stage); the best iteration's model is ``best.pt``.

Table 1's rows are switches: ``past.use_ctl``, ``past.use_rtl``, ``past.use_promoting``.
Mixing with MSPLR's parts: ``pseudo.camera_norm: true`` normalises per camera (MSPLR eq. 4)
before the Jaccard distance, ``pseudo.select: true`` applies MSPLR's cluster selection,
``pseudo.method: dbscan`` / ``kmeans`` replaces HDBSCAN (Table 2); the other way round,
``loss.rtl_weight > 0`` adds RTL to MSPLR's loss (:func:`mix_rtl`). MSPLR's
``adapt.epochs_per_step`` and ``train.freeze_epochs`` are not used here.

Checkpoints are written after every epoch, with the iteration's pseudo-labels, its D_R
neighbour table and the current stage, so a killed run resumes inside a stage without
clustering again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import Config
from ..data.datasets import ReidDataset, Sample
from ..data.images import ImageDataset
from ..data.loaders import seed_worker
from ..data.sampler import PKSampler
from ..engine import distributed as D
from ..engine.faults import crash_point
from ..engine.optim import build_optimizer, multistep_factor
from ..engine.run import RunDir
from ..engine.trainer import Trainer
from ..errors import ConfigError, TrainingError
from ..losses.past_loss import ConservativeLoss, RankingTripletAugmented, promoting_loss
from ..losses.ranking_triplet import sample_rtl_pairs
from ..models import BACKBONES, ReidModel, build_model
from ..pseudo.camera_norm import camera_normalize
from ..pseudo.kreciprocal import jaccard_distance
from ..pseudo.labels import PseudoLabels, auto_eps, make_pseudo_labels
from ..pseudo.ranking import ranked_neighbors
from .common import (
    finish_run,
    identities_per_batch,
    load_dataset,
    seed_everything,
    train_transform,
)
from .msplr import _fmt_stats, pseudo_label_kwargs, sweep_kwargs
from .progressive import ProgressiveRun, ground_truth

log = logging.getLogger("adaptreid")

__all__ = [
    "RankingTripletBatchSampler",
    "adapt_past",
    "check_past_config",
    "cluster_mean_weights",
    "mix_rtl",
    "past_model",
    "past_pseudo_labels",
    "past_train_loader",
    "rtl_ranking",
    "rtl_ranking_state",
]

CONSERVATIVE, PROMOTING = "conservative", "promoting"
_CLASSIFIER_INITS = ("normalized", "raw", "random")


# --------------------------------------------------------------------------------------------
# data: P x K anchors (+ RTL positives and negatives)
# --------------------------------------------------------------------------------------------


class RankingTripletBatchSampler:
    """Batches of ``(dataset index, role, rank)`` keys: P x K anchors, then one positive and
    one negative per anchor for RTL (PAST eq. 4; roles 0 / 1 / 2, ranks 1-based, 0 for
    anchors). Without ``ranked`` it yields the anchors only.

    Args:
        pk: a :class:`PKSampler` over the *whole* target set with pseudo-labels, outliers
            (-1) left out (``unlabelled_ok=True``): the anchors come from T_U.
        ranked: ``(N, >= 2 eta)`` neighbour table of D_R (:func:`rtl_ranking`), or None.
        eta: RTL's eta.
        seed: the (positive, negative) draw of batch ``b`` of epoch ``e`` on rank ``r`` uses
            ``numpy.random.default_rng((seed, e, r, b))``.
    """

    def __init__(
        self,
        pk: PKSampler,
        ranked: np.ndarray | None = None,
        eta: int = 20,
        *,
        seed: int = 0,
    ) -> None:
        self.sampler = pk  # the trainer calls set_epoch on it too (same epoch: harmless)
        self.ranked = None if ranked is None else np.asarray(ranked, dtype=np.int64)
        self.eta = int(eta)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.sampler.num_batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        bs = self.sampler.batch_size
        flat = np.fromiter(iter(self.sampler), dtype=np.int64)
        for b in range(len(flat) // bs):
            anchors = flat[b * bs : (b + 1) * bs]
            keys = [(int(a), 0, 0) for a in anchors]
            if self.ranked is not None:
                rng = np.random.default_rng((self.seed, self.epoch, self.sampler.rank, b))
                pos, neg, pr, nr = sample_rtl_pairs(self.ranked, anchors, self.eta, rng)
                keys += [(int(i), 1, int(r)) for i, r in zip(pos, pr)]
                keys += [(int(i), 2, int(r)) for i, r in zip(neg, nr)]
            yield keys


class _KeyedImages(ImageDataset):
    """``ImageDataset`` indexed by ``(index, role, rank)`` keys; adds ``rtl_role`` /
    ``rtl_rank`` to each item."""

    def __getitem__(self, key):  # type: ignore[override]
        index, role, rank = key
        item = super().__getitem__(int(index))
        item["rtl_role"], item["rtl_rank"] = int(role), int(rank)
        return item


def past_train_loader(
    cfg: Config,
    train: Sequence[Sample],
    labels: np.ndarray,
    *,
    ranked: np.ndarray | None = None,
    eta: int = 20,
    seed: int = 0,
) -> DataLoader:
    """A P x K loader over the pseudo-labelled target images (``labels >= 0``; ``pid`` =
    label), with ``cfg.data``'s augmentation. With ``ranked`` each batch also holds one RTL
    positive and negative per anchor, from the whole of ``train`` (``pid`` -1 for outliers),
    and the entries ``rtl_role`` / ``rtl_rank`` (:mod:`adaptreid.losses.past_loss`)."""
    d = cfg.data
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(train):
        raise ValueError(f"{len(labels)} labels for {len(train)} images")
    samples = [Sample(s.path, int(lab), s.camid) for s, lab in zip(train, labels)]
    tf = train_transform(cfg)
    p = identities_per_batch(cfg, len(np.unique(labels[labels >= 0])))
    pk = PKSampler(
        labels.tolist(),
        p,
        d.num_instances,
        seed=seed,
        rank=D.rank(),
        world_size=D.world_size(),
        unlabelled_ok=True,
    )
    return DataLoader(
        _KeyedImages(samples, tf),
        batch_sampler=RankingTripletBatchSampler(pk, ranked, eta, seed=seed),
        num_workers=d.num_workers,
        persistent_workers=False,  # re-created each epoch: seeds from the trainer's generator
        worker_init_fn=seed_worker if d.num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


# --------------------------------------------------------------------------------------------
# pseudo-labels and the ranking score matrix
# --------------------------------------------------------------------------------------------


def _prepared(feats: torch.Tensor, camids, camera_norm: bool) -> torch.Tensor:
    """The rows the Jaccard distance is computed on, as make_pseudo_labels prepares them."""
    if camera_norm:
        return torch.as_tensor(camera_normalize(feats, camids, l2_after=True))
    return F.normalize(feats.float(), dim=1)


def rtl_ranking(feats: torch.Tensor, camids, cfg: Config) -> np.ndarray:
    """``(N, 2 eta)`` neighbour table of the ranking score matrix D_R (PAST eq. 1-2): the
    k-reciprocal Jaccard distance (``pseudo.k1``, ``pseudo.k2``) of the target features,
    after MSPLR's camera normalisation when ``pseudo.camera_norm`` (item of mixing), each row
    sorted (:func:`adaptreid.pseudo.ranking.ranked_neighbors`)."""
    x = _prepared(feats, camids, cfg.pseudo.camera_norm)
    jac = jaccard_distance(x, k1=cfg.pseudo.k1, k2=cfg.pseudo.k2)
    return ranked_neighbors(jac, 2 * cfg.past.eta, features=x)


def past_pseudo_labels(
    feats: torch.Tensor, camids, cfg: Config, true_pids=None
) -> tuple[PseudoLabels, np.ndarray | None]:
    """Algorithm 1 lines 3-5: pseudo-labels (HDBSCAN on the Jaccard distance by default;
    ``cfg.pseudo``) and, when RTL is on, the D_R neighbour table of :func:`rtl_ranking`.

    The Jaccard distance is computed twice (once inside :func:`make_pseudo_labels`, once for
    the ranking): a few seconds at N = 13k, kept for the sake of one pseudo-label pipeline.
    """
    kwargs = pseudo_label_kwargs(cfg)
    if cfg.pseudo.method == "dbscan" and cfg.pseudo.auto_eps:  # as MSPLR does
        kwargs["eps"], _, reason = auto_eps(feats, camids, **sweep_kwargs(kwargs))
        log.info("auto eps: %s", reason.split(";")[0])
    result = make_pseudo_labels(feats, camids, true_pids=true_pids, **kwargs)
    ranked = rtl_ranking(feats, camids, cfg) if cfg.past.use_rtl else None
    return result, ranked


def _ranking_quality(ranked: np.ndarray, eta: int, true_pids: np.ndarray | None) -> dict:
    """With ground truth (analysis only): the fraction of RTL positives (ranks 1..eta) that
    share the anchor's identity and of negatives (eta+1..2 eta) that do not."""
    if true_pids is None:
        return {}
    same = true_pids[ranked] == true_pids[:, None]
    return {
        "quality_rtl_pos_precision": float(same[:, :eta].mean()),
        "quality_rtl_neg_precision": float(1.0 - same[:, eta : 2 * eta].mean()),
    }


def cluster_mean_weights(feats: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """PAST eq. 7: ``W_c`` = the mean of the features of cluster ``c``; returns ``(C, D)``
    (row c for label c; labels -1 are ignored)."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    keep = labels_t >= 0
    if not bool(keep.any()):
        raise TrainingError("eq. 7: no labelled image to initialise the classifier from")
    x, lab = feats.float()[keep], labels_t[keep]
    num_classes = int(lab.max()) + 1
    sums = torch.zeros(num_classes, x.shape[1]).index_add_(0, lab, x)
    counts = torch.bincount(lab, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return sums / counts


def rtl_ranking_state(feats, cfg: Config) -> torch.Tensor:
    """:func:`rtl_ranking` of extracted target ``feats`` (computed on rank 0, broadcast), as
    an int32 tensor for a loop state (the checkpoint keeps it for a resume)."""
    ranked = rtl_ranking(feats.feats, feats.camids, cfg) if D.is_main() else None
    return torch.from_numpy(D.broadcast_object(ranked).astype(np.int32))


def mix_rtl(cfg: Config, criterion, train, labels, ranked, seed: int):
    """RTL inside another recipe (``loss.rtl_weight > 0``, e.g. MSPLR): ``criterion +
    loss.rtl_weight * L_RTL`` (eta = ``past.eta``, m = ``loss.margin``) and a loader whose
    P x K batches carry one RTL positive and negative per anchor. Returns
    ``(criterion, loader)``; ``ranked`` is :func:`rtl_ranking_state`'s table."""
    table = ranked.numpy().astype(np.int64) if torch.is_tensor(ranked) else np.asarray(ranked)
    loader = past_train_loader(cfg, train, labels, ranked=table, eta=cfg.past.eta, seed=seed)
    wrapped = RankingTripletAugmented(
        criterion, weight=cfg.loss.rtl_weight, eta=cfg.past.eta, margin=cfg.loss.margin
    )
    return wrapped, loader


# --------------------------------------------------------------------------------------------
# model and optimisers
# --------------------------------------------------------------------------------------------


def past_model(cfg: Config, model: ReidModel) -> ReidModel:
    """The network PAST trains: ``model`` itself when it already has the configured head,
    else the configured head (e.g. PCB) on ``model``'s trained trunk (its ``backbone.*``
    weights; the backbones must be the same network)."""
    m = cfg.model
    want = {
        "head": str(m.head).lower(),
        "head_options": dict(m.head_options),
        "embedding_dim": int(m.embedding_dim),
        "pooling": str(m.pooling).lower(),
    }
    if all(model.arch.get(k) == v for k, v in want.items()):
        return model
    have = model.arch.get("backbone")
    name = getattr(BACKBONES.get(m.backbone), "__name__", m.backbone)
    if have != name:
        raise ConfigError(
            f"adapt.init_checkpoint has a {have!r} trunk but model.backbone is {m.backbone!r}: "
            "PAST keeps the source trunk and needs the same backbone"
        )
    new = build_model(
        m.backbone,
        num_classes=0,
        last_stride=m.last_stride,
        pooling=m.pooling,
        embedding_dim=m.embedding_dim,
        neck_feat=m.neck_feat,
        pretrained=None,
        head=m.head,
        head_options=m.head_options,
        backbone_options=model.arch.get("backbone_options") or {},
    )
    new.backbone.load_state_dict(model.backbone.state_dict())
    log.info(
        "PAST model: new %s head (%s) on the source %s trunk",
        m.head,
        ", ".join(f"{k}={v}" for k, v in m.head_options.items()) or "defaults",
        have,
    )
    return new


def _lr_factor(cfg: Config, iteration: int) -> float:
    p = cfg.past
    if p.lr_decay_after <= 0:
        return 1.0
    return multistep_factor(iteration, [p.lr_decay_after], p.lr_decay)


def _optimizer(cfg: Config, groups: list[dict]):
    o = cfg.optim
    return build_optimizer(
        groups,
        name=o.name,
        lr=max(g["lr"] for g in groups),
        weight_decay=o.weight_decay,
        momentum=o.momentum,
    )


def conservative_optimizer(cfg: Config, model: ReidModel, iteration: int):
    """Section 3.1: the trunk at 1e-4, the embedding layers (the head) at 2e-4 (x 0.1 after
    iteration 3)."""
    f = _lr_factor(cfg, iteration)
    return _optimizer(
        cfg,
        [
            {
                "params": list(model.body_parameters()),
                "lr": cfg.past.lr_trunk_conservative * f,
                "name": "trunk",
            },
            {
                "params": list(model.head_parameters()),
                "lr": cfg.past.lr_embedding_conservative * f,
                "name": "embedding",
            },
        ],
    )


def promoting_optimizer(cfg: Config, model: ReidModel, iteration: int):
    """Section 3.1: the new classifier at 1e-3, every other layer at 5e-5 (x 0.1 after
    iteration 3)."""
    f = _lr_factor(cfg, iteration)
    classifier = list(model.head.classifier.parameters())
    ids = {id(p) for p in classifier}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return _optimizer(
        cfg,
        [
            {
                "params": classifier,
                "lr": cfg.past.lr_classifier_promoting * f,
                "name": "classifier",
            },
            {"params": rest, "lr": cfg.past.lr_rest_promoting * f, "name": "rest"},
        ],
    )


def check_past_config(cfg: Config) -> None:
    p = cfg.past
    if not (p.use_ctl or p.use_rtl):
        raise ConfigError("past.use_ctl and past.use_rtl are both off: no conservative loss")
    if p.eta < 1:
        raise ConfigError(f"past.eta must be >= 1, got {p.eta}")
    if p.classifier_init not in _CLASSIFIER_INITS:
        raise ConfigError(
            f"past.classifier_init must be one of {_CLASSIFIER_INITS}, got {p.classifier_init!r}"
        )
    if p.conservative_epochs < 0 or p.promoting_epochs < 0:
        raise ConfigError("past.conservative_epochs / promoting_epochs must be >= 0")


# --------------------------------------------------------------------------------------------
# the recipe
# --------------------------------------------------------------------------------------------


def adapt_past(cfg: Config, *, resume: bool = False, verbose: bool = True) -> RunDir:
    """Run PAST (Algorithm 1) on ``cfg.data.target``; returns the run folder."""
    check_past_config(cfg)
    _, _, device = D.init(cfg.device)
    run, cfg = RunDir.prepare(cfg, resume=resume)
    seed_everything(cfg.seed)
    target = load_dataset(cfg, "target")
    gt = ground_truth(target.train)
    loop = ProgressiveRun(cfg, run, device, "past", verbose=verbose)
    model = loop.start(target, resume=resume)
    s = loop.state
    p = cfg.past
    c_end = p.conservative_epochs
    p_end = c_end + (p.promoting_epochs if p.use_promoting else 0)

    while not (s.step_done and loop.should_stop()):
        t_step = time.perf_counter()
        if s.step_done:  # a new iteration: Algorithm 1 lines 3-5
            s.step += 1
            s.step_done, s.trainer = False, None
            # features of the current model: at iteration 1 the source model M as trained
            feats = loop.target_features(model, target, normalize=True)
            labels, ranked = _pseudo_labels(cfg, feats, gt, s.step, run)
            crash_point("cluster")
            model = past_model(cfg, model).to(device)  # the configured head (iteration 1)
            model.reset_classifier(0)  # the conservative stage has no classifier
            s.labels = labels
            s.extra = {
                "stage": CONSERVATIVE,
                "ranked": None if ranked is None else torch.from_numpy(ranked.astype(np.int32)),
            }
            loop.save(model)

        num_classes = int(s.labels.max()) + 1
        if num_classes < 1:
            raise TrainingError(f"iteration {s.step}: no pseudo-label cluster to train on")
        if s.extra["stage"] == CONSERVATIVE:  # line 6
            ranked = s.extra.get("ranked")
            criterion = ConservativeLoss(
                eta=p.eta,
                margin=cfg.loss.margin,
                lam=p.lambda_ctl,
                use_ctl=p.use_ctl,
                use_rtl=p.use_rtl,
            )
            loader = past_train_loader(
                cfg,
                target.train,
                s.labels,
                ranked=None if ranked is None else ranked.numpy().astype(np.int64),
                eta=p.eta,
                seed=cfg.seed * 1000 + s.step,
            )
            optimizer = conservative_optimizer(cfg, model, s.step)
            _train_stage(
                loop, model, criterion, optimizer, loader, CONSERVATIVE, 1, c_end, target, verbose
            )
            if p.use_promoting:  # lines 7 and 9: F_U, then the classifier of eq. 7
                weight = None
                if p.classifier_init != "random":
                    f_u = loop.target_features(
                        model, target, normalize=p.classifier_init == "normalized"
                    )
                    weight = cluster_mean_weights(f_u.feats, s.labels)
                model.reset_classifier(num_classes, weight)
                s.extra["stage"], s.trainer = PROMOTING, None
                loop.save(model)
        if s.extra["stage"] == PROMOTING:  # line 10
            criterion = promoting_loss(num_classes, model.feat_dim)
            loader = past_train_loader(cfg, target.train, s.labels, seed=cfg.seed * 1000 + s.step)
            optimizer = promoting_optimizer(cfg, model, s.step)
            _train_stage(
                loop,
                model,
                criterion,
                optimizer,
                loader,
                PROMOTING,
                c_end + 1,
                p_end,
                target,
                verbose,
            )

        loop.finish_step(model, target, t_step, unit="iteration")
    finish_run(cfg, run, target, device, stage="past", verbose=verbose)
    D.barrier()
    return run


def _pseudo_labels(cfg: Config, feats, gt, step: int, run: RunDir):
    """Lines 3-5 on rank 0, broadcast; logs the ``labels`` record."""
    out = None
    if D.is_main():
        result, ranked = past_pseudo_labels(feats.feats, feats.camids, cfg, gt)
        out = (result, ranked)
    result, ranked = D.broadcast_object(out)
    record = {"kind": "labels", "step": step, **result.stats}
    record.update({f"quality_{k}": v for k, v in (result.quality or {}).items()})
    if ranked is not None:
        record.update(_ranking_quality(ranked, cfg.past.eta, gt))
    run.log_metrics(record)
    log.info("iteration %d pseudo-labels: %s", step, _fmt_stats(result.stats, result.quality))
    return result.labels, ranked


def _train_stage(
    loop: ProgressiveRun,
    model: ReidModel,
    criterion,
    optimizer,
    loader,
    stage: str,
    first: int,
    last: int,
    target: ReidDataset,
    verbose: bool,
) -> None:
    """Epochs ``first..last`` of one stage, numbered within the iteration (the promoting
    stage continues the conservative stage's numbering), checkpointed after each epoch;
    resumes from ``loop.state.trainer`` when it belongs to this stage."""
    s, cfg = loop.state, loop.cfg
    trainer = Trainer(
        model,
        criterion,
        optimizer,
        loader,
        device=loop.device,
        amp=cfg.train.amp,
        channels_last=cfg.train.channels_last,
        iters_per_epoch=cfg.train.iters_per_epoch,
        seed=cfg.seed * 1000 + s.step,
        desc=f"iteration {s.step} {stage}",
        verbose=verbose,
    )
    if s.trainer is not None:  # resuming inside this stage
        trainer.load_state_dict({**s.trainer, "model": model.state_dict()})
    for epoch in range(max(trainer.epoch, first - 1) + 1, last + 1):
        stats = trainer.train_epoch(epoch)
        record = {"kind": "epoch", "step": s.step, "epoch": epoch, "stage": stage, **stats}
        if stage == CONSERVATIVE and epoch == last and cfg.past.eval_after_conservative:
            metrics = loop.evaluate(model, target) or {}
            record.update({f"conservative_{k}": v for k, v in metrics.items()})
        s.trainer = {k: v for k, v in trainer.state_dict().items() if k != "model"}
        loop.run.log_metrics(record)
        loop.save(model)
