"""PAST's stage criteria (sections 2.2-2.3), in the trainer's criterion form
``(outputs, batch) -> (loss, {part: float})``.

Batches with RTL triplets
-------------------------
RTL (eq. 4) needs, for every anchor, the features of a positive drawn from ranks ``1..eta``
and of a negative from ranks ``eta+1..2 eta`` of the anchor's row of the ranking score matrix
(eq. 2), and "the selected anchors in each batch are the same as CTL". So a conservative-stage
batch is the P x K pseudo-label batch of ``B`` anchors followed by their ``B`` positives and
``B`` negatives, all forwarded together (one pass, one set of BatchNorm statistics), with two
extra batch entries (see :class:`adaptreid.methods.past.RankingTripletBatchSampler`):

* ``rtl_role``: 0 for anchors, 1 for positives, 2 for negatives; the i-th positive and the
  i-th negative belong to the i-th anchor (order is preserved within each role);
* ``rtl_rank``: the 1-based ranking position ``P_p`` / ``P_n`` (0 for anchors).

Without ``rtl_role`` in the batch every image is an anchor (CTL only). CTL mines only among
the anchors: the P x K structure it needs (eq. 3) is theirs; positives and negatives are
drawn from the whole target set, outliers included, and carry no reliable label.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError
from .ranking_triplet import conservative_loss, ranking_triplet_loss
from .reid_loss import ReidLoss
from .triplet import TripletLoss

__all__ = [
    "TRIPLET_READINGS",
    "ConservativeLoss",
    "RankingTripletAugmented",
    "promoting_loss",
    "split_rtl_batch",
]

ANCHOR, POSITIVE, NEGATIVE = 0, 1, 2
#: Readings of CTL / RTL's feature and distance (``method.triplet_reading``; the first is the
#: released code's): see :class:`ConservativeLoss`.
TRIPLET_READINGS = ("per_part_cosine", "concatenated_euclidean")


def split_rtl_batch(feat: Tensor, batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(anchors, positives, negatives, pos_rank, neg_rank)`` of a batch built by
    :class:`adaptreid.methods.past.RankingTripletBatchSampler` (see the module docstring)."""
    role = batch["rtl_role"].to(feat.device)
    rank = batch["rtl_rank"].to(feat.device)
    a, p, n = (role == ANCHOR), (role == POSITIVE), (role == NEGATIVE)
    if not (int(a.sum()) == int(p.sum()) == int(n.sum())):
        raise ValueError(
            f"RTL batch needs as many positives and negatives as anchors, got "
            f"{int(a.sum())}, {int(p.sum())}, {int(n.sum())}"
        )
    return feat[a], feat[p], feat[n], rank[p], rank[n]


def _anchor_mask(batch: dict, device) -> Tensor | None:
    role = batch.get("rtl_role")
    return None if role is None else role.to(device) == ANCHOR


class ConservativeLoss(nn.Module):
    """PAST's conservative-stage loss, eq. 5: ``L_C = L_RTL + lambda * L_CTL``.

    * CTL, eq. 3: batch-hard triplet loss with margin ``m`` on the anchors' pseudo-labels;
    * RTL, eq. 4: ``[|P_p - P_n| / eta * m + d(f_a, f_p) - d(f_a, f_n)]_+`` on the anchors
      and their sampled positives and negatives.

    The paper writes ``||f(x_a) - f(x_p)||_2`` and leaves the feature unnamed; ``reading``
    (:data:`TRIPLET_READINGS`, ``method.triplet_reading``) says which feature and distance:

    * ``"per_part_cosine"``: the authors' released code (``reid/loss/triplet_loss.py``,
      ``--dist_type cosine``, its default): each of the ``num_parts`` part embeddings of
      ``outputs["feat"]`` (part ``k`` in columns ``[k d, (k + 1) d)``) L2-normalised, the
      cosine distance ``1 - cos``; CTL is the *sum* over the parts of each part's batch-hard
      loss (mined in that part), RTL the *mean* over the parts of each part's eq. 4 (the
      code's ``--triloss_mean``; its training scripts leave it off and sum RTL too, with a
      further weight 0.1 on both terms that is not taken here: README, "Known differences");
    * ``"concatenated_euclidean"``: the whole ``outputs["feat"]`` (for PCB the concatenated,
      unnormalised part embeddings) with the euclidean distance, eq. 3-4 as printed.

    Table 1's rows: ``use_ctl`` / ``use_rtl``; with one of them off the other has weight 1
    (the "CTL" row is plain CTL, not lambda x CTL). Both terms are means over anchors (eq. 3-4
    write sums; the mean only rescales the learning rate), as in the released code.
    """

    def __init__(
        self,
        *,
        eta: int = 20,
        margin: float = 0.3,
        lam: float = 0.5,
        use_ctl: bool = True,
        use_rtl: bool = True,
        reading: str = "concatenated_euclidean",
        num_parts: int = 1,
    ) -> None:
        super().__init__()
        if not (use_ctl or use_rtl):
            raise ConfigError("PAST conservative stage: enable use_ctl and/or use_rtl")
        if lam < 0:
            raise ConfigError(f"PAST lambda must be >= 0, got {lam}")
        if reading not in TRIPLET_READINGS:
            raise ConfigError(
                f"PAST triplet reading must be one of {TRIPLET_READINGS}, got {reading!r}"
            )
        if isinstance(num_parts, bool) or int(num_parts) != num_parts or num_parts < 1:
            raise ConfigError(f"num_parts must be a positive integer, got {num_parts!r}")
        self.eta, self.margin, self.lam = int(eta), float(margin), float(lam)
        self.use_ctl, self.use_rtl = bool(use_ctl), bool(use_rtl)
        self.reading = reading
        self.num_parts = int(num_parts) if reading == "per_part_cosine" else 1
        self.metric = "cosine" if reading == "per_part_cosine" else "euclidean"
        self.ctl = TripletLoss(margin=margin, metric=self.metric)

    def _split(self, x: Tensor) -> list[Tensor]:
        """The per-part features of ``x`` (``(B, p d)``): ``[x]`` when read whole."""
        if self.num_parts == 1:
            return [x]
        if x.shape[1] % self.num_parts:
            raise ValueError(
                f"feature of size {x.shape[1]} does not split into {self.num_parts} parts"
            )
        return list(x.reshape(x.shape[0], self.num_parts, -1).unbind(1))

    def _ctl(self, anchors: Tensor, labels: Tensor) -> tuple[Tensor, float]:
        """CTL summed over the parts (one part when read whole), and the mean fraction of
        active triplets."""
        total, active = anchors.new_zeros(()), 0.0
        parts = self._split(anchors)
        for part in parts:
            total = total + self.ctl(part, labels)
            active += self.ctl.last_stats.active_fraction
        return total, active / len(parts)

    def _rtl(self, a: Tensor, p: Tensor, n: Tensor, pr: Tensor, nr: Tensor) -> Tensor:
        """RTL averaged over the parts (one part when read whole)."""
        terms = [
            ranking_triplet_loss(ak, pk, nk, pr, nr, self.eta, self.margin, self.metric)
            for ak, pk, nk in zip(self._split(a), self._split(p), self._split(n))
        ]
        return sum(terms[1:], terms[0]) / len(terms)

    def forward(self, outputs: dict[str, Tensor], batch: dict) -> tuple[Tensor, dict]:
        feat = outputs["feat"]
        parts: dict[str, float] = {}
        if self.use_rtl:
            if "rtl_role" not in batch:
                raise ValueError("RTL needs batches with rtl_role / rtl_rank (RTL triplets)")
            a, p, n, pr, nr = split_rtl_batch(feat, batch)
            labels = batch["pid"].to(feat.device)[batch["rtl_role"].to(feat.device) == ANCHOR]
            rtl = self._rtl(a, p, n, pr, nr)
            parts["rtl"] = float(rtl.detach())
        else:
            mask = _anchor_mask(batch, feat.device)
            a = feat if mask is None else feat[mask]
            labels = batch["pid"].to(feat.device)
            labels = labels if mask is None else labels[mask]
        if self.use_ctl:
            ctl, active = self._ctl(a, labels)
            parts["ctl"] = float(ctl.detach())
            parts["active_triplets"] = active
        if self.use_rtl and self.use_ctl:
            total = conservative_loss(rtl, ctl, self.lam)
        else:
            total = rtl if self.use_rtl else ctl
        return total, parts

    def extra_repr(self) -> str:
        return (
            f"eta={self.eta}, margin={self.margin}, lambda={self.lam}, "
            f"use_ctl={self.use_ctl}, use_rtl={self.use_rtl}, reading={self.reading}, "
            f"num_parts={self.num_parts}"
        )


def promoting_loss(num_classes: int, feat_dim: int) -> ReidLoss:
    """PAST's promoting-stage loss, eq. 6: plain softmax cross-entropy on the classifier's
    logits (no triplet, no centre loss, no label smoothing): the re-ID loss with only its
    ``L_ID`` term and ``epsilon = 0``.

    With one classifier per part (PCB head option ``classifier: per_part``, section 3.1:
    "following each embedding layer [...] the classifier layer") the logits are ``(B, p, C)``
    and the loss is the sum over the ``p`` parts of eq. 6 for each part (as PCB and PAST's
    released code; :func:`~adaptreid.losses.cross_entropy.parts_cross_entropy`); with the
    joint classifier, ``(B, C)`` logits, it is eq. 6 once."""
    return ReidLoss(
        num_classes,
        feat_dim,
        triplet_weight=0.0,
        ce_weight=1.0,
        label_smoothing=0.0,
        center_weight=0.0,
    )


class RankingTripletAugmented(nn.Module):
    """Any criterion plus ``weight * L_RTL`` (PAST eq. 4), for mixing RTL into other recipes
    (e.g. MSPLR with ``loss.rtl_weight > 0``).

    On RTL batches the wrapped criterion sees only the anchors (outputs and batch entries
    sliced alike), so it trains exactly as on a plain P x K batch; RTL uses the anchors and
    their positives / negatives. ``base`` stays reachable (its centre-loss optimiser etc.).
    """

    def __init__(self, base: nn.Module, *, weight: float, eta: int = 20, margin: float = 0.3):
        super().__init__()
        if weight < 0:
            raise ConfigError(f"RTL weight must be >= 0, got {weight}")
        self.base = base
        self.weight, self.eta, self.margin = float(weight), int(eta), float(margin)

    def forward(self, outputs: dict[str, Tensor], batch: dict) -> tuple[Tensor, dict]:
        feat = outputs["feat"]
        mask = _anchor_mask(batch, feat.device)
        if mask is None:
            return self.base(outputs, batch)
        n = feat.shape[0]
        sub_out = {k: (v[mask] if _is_batch(v, n) else v) for k, v in outputs.items()}
        sub_batch = {k: (v[mask.to(v.device)] if _is_batch(v, n) else v) for k, v in batch.items()}
        total, parts = self.base(sub_out, sub_batch)
        a, p, neg, pr, nr = split_rtl_batch(feat, batch)
        rtl = ranking_triplet_loss(a, p, neg, pr, nr, self.eta, self.margin)
        parts = {**parts, "rtl": float(rtl.detach())}
        return total + self.weight * rtl, parts


def _is_batch(v, n: int) -> bool:
    return isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == n
