"""The supervised re-ID objective of both recipes' baselines.

MSPLR eq. 5: ``L = L_tri + L_ID + 0.005 L_c``, with a batch-hard triplet loss on the pre-BN
feature, a label-smoothed cross-entropy on the classifier's logits, and a centre loss on the
pre-BN feature. Each weight is a config value (0 switches the term off). The weight 0.005 is
MSPLR's (eq. 5); the smoothing 0.1 and the centre learning rate 0.5 are defaults taken from
the bag of tricks (Luo et al. 2019, MSPLR's reference [21]); the MSPLR paper states neither.

Logits of shape ``(B, C)`` (one classifier) or ``(B, p, C)`` (one classifier per part, e.g.
PCB for PAST's source model, section 3.1): ``L_ID`` is then the sum over the parts of each
part's label-smoothed cross-entropy
(:func:`~adaptreid.losses.cross_entropy.parts_cross_entropy`), and the logged accuracy is that
of the summed part logits.
"""

from __future__ import annotations

from torch import Tensor, nn

from .center import CenterLoss, CenterOptimizer
from .cross_entropy import CrossEntropyLabelSmooth
from .triplet import TripletLoss


class ReidLoss(nn.Module):
    """``w_tri L_tri + w_id L_ID + w_c L_c`` on a model's training outputs.

    Call as ``loss, parts = criterion(outputs, batch)`` with ``outputs`` the model's training
    dict (``feat``, ``logits`` of shape ``(B, C)`` or ``(B, p, C)``) and ``batch["pid"]`` the
    (pseudo-)labels in ``[0, C)``.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        triplet_weight: float = 1.0,
        margin: float = 0.3,
        soft_margin: bool = False,
        ce_weight: float = 1.0,
        label_smoothing: float = 0.1,
        center_weight: float = 0.005,
    ) -> None:
        super().__init__()
        self.triplet_weight = float(triplet_weight)
        self.ce_weight = float(ce_weight)
        self.center_weight = float(center_weight)
        self.triplet = TripletLoss(margin=margin, soft_margin=soft_margin)
        self.ce = CrossEntropyLabelSmooth(epsilon=label_smoothing)
        self.center = CenterLoss(num_classes, feat_dim) if center_weight > 0 else None

    def center_optimizer(self, lr: float = 0.5) -> CenterOptimizer | None:
        """The centres' own SGD (lr 0.5: the bag of tricks' value), or None without a centre
        loss."""
        if self.center is None:
            return None
        return CenterOptimizer(self.center, lr=lr, weight=self.center_weight)

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        labels = batch["pid"]
        feat = outputs["feat"]
        total = feat.new_zeros(())
        parts: dict[str, float] = {}
        if self.triplet_weight > 0:
            tri = self.triplet(feat, labels)
            total = total + self.triplet_weight * tri
            parts["triplet"] = float(tri.detach())
            parts["active_triplets"] = float(self.triplet.last_stats.active_fraction)
        logits = outputs.get("logits")
        if self.ce_weight > 0 and logits is not None:
            ce = self.ce(logits, labels)
            total = total + self.ce_weight * ce
            parts["ce"] = float(ce.detach())
            scores = logits if logits.dim() == 2 else logits.sum(1)
            parts["acc"] = float((scores.argmax(1) == labels.to(scores.device)).float().mean())
        if self.center is not None:
            c = self.center(feat, labels)
            total = total + self.center_weight * c
            parts["center"] = float(c.detach())
        return total, parts


def build_reid_loss(cfg, num_classes: int, feat_dim: int) -> ReidLoss:
    """From a :class:`adaptreid.config.LossConfig`."""
    return ReidLoss(
        num_classes,
        feat_dim,
        triplet_weight=cfg.triplet_weight,
        margin=cfg.margin,
        soft_margin=cfg.soft_margin,
        ce_weight=cfg.ce_weight,
        label_smoothing=cfg.label_smoothing,
        center_weight=cfg.center_weight,
    )


__all__ = ["ReidLoss", "build_reid_loss"]
