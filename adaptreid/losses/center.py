"""Centre loss (Wen et al. 2016, "A Discriminative Feature Learning Approach for Deep Face
Recognition", eq. 2), in the form used by the re-ID "bag of tricks" (Luo et al. 2019).

MSPLR (section 3.6.1, eq. 5) trains with ``L = L_tri + L_ID + 0.005 L_c``. The
weight 0.005 is MSPLR's own (the bag of tricks weights its centre loss by 0.0005); MSPLR cites
Wen et al. [33] for the loss and builds its baseline on the bag of tricks (its reference [21]),
so we follow the bag-of-tricks definition rather than Wen's original:

    L_c = 1/B * sum_i clamp(||f_i - c_{y_i}||_2^2, 1e-12, 1e12)

(a mean over the batch of the squared distance of each feature to its class centre; Wen's
eq. 2 has a factor 1/2 and a sum, which would silently change what "0.005" means).

How the centres learn (the bag-of-tricks recipe)
------------------------------------------------
The MSPLR paper does not say how the centres learn; we use the bag of tricks' recipe. The
centres are an ``nn.Parameter`` learnt by gradient descent with their *own* plain SGD
optimiser (lr 0.5, the bag of tricks' value; no momentum, no weight decay), not by the
model's optimiser and not by Wen's count-normalised moving-average update. Because the loss
enters the total objective as ``weight * L_c`` (weight 0.005), the gradient reaching the
centres is ``weight`` times too small; before the centre step it is multiplied by
``1 / weight``, so the centres move with ``lr * dL_c/dc`` whatever the weight (the weight
only scales the pull on the *features*).
:class:`CenterOptimizer` does exactly this::

    center = CenterLoss(num_classes, 2048)
    copt = CenterOptimizer(center, lr=0.5, weight=0.005)
    loss = tri + ce + 0.005 * center(feats, labels)
    opt.zero_grad(); copt.zero_grad()
    loss.backward()
    opt.step(); copt.step()          # rescales the centre gradient by 1/0.005, then SGD

New pseudo-label spaces (every MSPLR / PAST round) call :meth:`CenterLoss.reset`; the
:class:`CenterOptimizer` notices the new parameter and follows it on its next step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["CenterLoss", "CenterOptimizer", "rescale_center_grad"]


class CenterLoss(nn.Module):
    """Centre loss (Wen et al. 2016 eq. 2, bag-of-tricks form; MSPLR eq. 5 ``L_c``).

    Args:
        num_classes: number of (pseudo-)identities.
        feat_dim: feature dimension.
        centers: optional ``(num_classes, feat_dim)`` initial centres (e.g. cluster means);
            by default they are drawn from a standard normal, as in the bag of tricks.
        generator: optional ``torch.Generator`` for reproducible random centres.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        centers: Tensor | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if feat_dim < 1:
            raise ConfigError(f"center loss feat_dim must be >= 1, got {feat_dim}")
        self.feat_dim = int(feat_dim)
        self.centers = nn.Parameter(self._init(num_classes, centers, generator))

    @property
    def num_classes(self) -> int:
        return self.centers.size(0)

    def _init(self, num_classes: int, centers: Tensor | None, generator) -> Tensor:
        if num_classes < 1:
            raise ConfigError(f"center loss num_classes must be >= 1, got {num_classes}")
        if centers is None:
            return torch.randn(num_classes, self.feat_dim, generator=generator)
        if tuple(centers.shape) != (num_classes, self.feat_dim):
            raise ValueError(
                f"centers must have shape ({num_classes}, {self.feat_dim}), "
                f"got {tuple(centers.shape)}"
            )
        return centers.detach().clone()

    def forward(self, feats: Tensor, labels: Tensor) -> Tensor:
        """Mean over the batch of ``||f_i - c_{y_i}||^2`` (each clamped to [1e-12, 1e12])."""
        if feats.dim() != 2 or feats.size(1) != self.feat_dim:
            raise ValueError(f"feats must be (B, {self.feat_dim}), got shape {tuple(feats.shape)}")
        labels = labels.reshape(-1).long()
        if labels.numel() != feats.size(0):
            raise ValueError(f"{labels.numel()} labels for {feats.size(0)} features")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        centers = self.centers.to(feats.dtype)[labels]
        dist = (feats - centers).pow(2).sum(1).clamp(1e-12, 1e12)
        return dist.mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}"


def rescale_center_grad(center_loss: CenterLoss, weight: float) -> None:
    """Multiply the centres' gradient by ``1 / weight`` in place (bag-of-tricks trick).

    The total loss contains ``weight * L_c``, so ``centers.grad == weight * dL_c/dc``; after
    this call it is ``dL_c/dc`` and the centre learning rate no longer depends on ``weight``.
    Does nothing when the centres have no gradient.
    """
    if weight <= 0:
        raise ConfigError(f"center loss weight must be > 0, got {weight}")
    grad = center_loss.centers.grad
    if grad is not None:
        grad.mul_(1.0 / weight)


class CenterOptimizer:
    """The centres' own SGD optimiser (bag of tricks: lr 0.5), with the ``1/weight`` rescale.

    :meth:`step` calls :func:`rescale_center_grad` then ``SGD.step``. If
    :meth:`CenterLoss.reset` replaced the centres, the inner SGD is rebuilt on the new
    parameter first (any momentum state is dropped: it belonged to the old label space).

    Args:
        center_loss: the :class:`CenterLoss` whose centres are optimised.
        lr: centre learning rate (0.5 in the bag of tricks; the MSPLR paper gives none).
        weight: the weight of ``L_c`` in the total loss (0.005 in MSPLR eq. 5).
        momentum: SGD momentum (0 in the bag of tricks).
    """

    def __init__(
        self, center_loss: CenterLoss, lr: float = 0.5, weight: float = 0.005, momentum: float = 0.0
    ):
        if lr <= 0:
            raise ConfigError(f"center loss lr must be > 0, got {lr}")
        if weight <= 0:
            raise ConfigError(f"center loss weight must be > 0, got {weight}")
        if momentum < 0:
            raise ConfigError(f"center optimiser momentum must be >= 0, got {momentum}")
        self.center_loss = center_loss
        self.lr = float(lr)
        self.weight = float(weight)
        self.momentum = float(momentum)
        self._build()

    def _build(self) -> None:
        self._param = self.center_loss.centers
        self.optimizer = torch.optim.SGD([self._param], lr=self.lr, momentum=self.momentum)

    def _sync(self) -> None:
        if self.center_loss.centers is not self._param:
            self._build()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._sync()
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        """Rescale the centre gradient by ``1/weight``, then take one SGD step."""
        self._sync()
        rescale_center_grad(self.center_loss, self.weight)
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sync()
        self.optimizer.load_state_dict(state)
