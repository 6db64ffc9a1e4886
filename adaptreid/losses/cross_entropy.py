"""Label-smoothed cross-entropy (Szegedy et al. 2016, "Rethinking the Inception
Architecture", section 7), as used by the re-ID bag of tricks (Luo et al. 2019) and by MSPLR
(section 3.6.1, eq. 5, the ``L_ID`` term, "a cross entropy label smooth loss [40]").
MSPLR gives no epsilon; the default 0.1 is the bag of tricks' (MSPLR's reference [21], whose
warm-up schedule its eq. 6 also takes), not a value the MSPLR paper states.

With ``C`` classes, logits ``z`` and label ``y``, the smoothed target is

    q_k = (1 - eps) * [k == y] + eps / C

and the loss is ``1/B * sum_i sum_k -q_{i,k} * log_softmax(z_i)_k`` (sum over classes, mean
over the batch). ``eps = 0`` is the plain softmax cross-entropy, which is PAST's promoting
stage loss (section 2.3, eq. 6).

``C`` is read from the logits each call, so the same criterion serves every pseudo-label round,
whose number of clusters changes.

Part-based heads (PCB with one classifier per part, PAST section 3.1) give ``(B, p, C)``
logits: :func:`parts_cross_entropy` is then the **sum** over the ``p`` parts of each part's
(label-smoothed) cross-entropy, each a mean over the batch. The sum, not the mean, because
PCB (Sun et al. 2018) trains with the sum of its p softmax cross-entropy losses and
PAST's released code does the same (``reid/loss/id_loss.py``: ``torch.stack(loss_list).sum()``),
so PAST's learning rates (section 3.1) go with it; a mean would scale every gradient
of the promoting stage by ``1 / p``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["CrossEntropyLabelSmooth", "cross_entropy_label_smooth", "parts_cross_entropy"]


def cross_entropy_label_smooth(logits: Tensor, labels: Tensor, epsilon: float = 0.1) -> Tensor:
    """Label-smoothed cross-entropy of ``(B, C)`` logits and ``(B,)`` labels in ``[0, C)``."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    labels = labels.reshape(-1).long()
    if labels.numel() != logits.size(0):
        raise ValueError(f"{labels.numel()} labels for {logits.size(0)} logits")
    num_classes = logits.size(1)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
        )
    log_probs = F.log_softmax(logits, dim=1)
    target = torch.full_like(log_probs, epsilon / num_classes)
    target.scatter_add_(1, labels.unsqueeze(1), torch.full_like(log_probs[:, :1], 1.0 - epsilon))
    return (-target * log_probs).sum(1).mean()


def parts_cross_entropy(logits: Tensor, labels: Tensor, epsilon: float = 0.1) -> Tensor:
    """``(B, C)`` logits: :func:`cross_entropy_label_smooth`. ``(B, p, C)`` logits (one
    classifier per part): ``sum_k cross_entropy_label_smooth(logits[:, k], labels)``, the
    sum over parts of the per-part losses (module docstring: why the sum)."""
    if logits.dim() == 2:
        return cross_entropy_label_smooth(logits, labels, epsilon)
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, C) or (B, parts, C), got {tuple(logits.shape)}")
    b, p, c = logits.shape
    labels = labels.reshape(-1)
    if labels.numel() != b:
        raise ValueError(f"{labels.numel()} labels for {b} logits")
    # the mean over the B * p rows, times p: the sum over parts of the per-part batch means
    flat_labels = labels.repeat_interleave(p)  # row i * p + k is part k of sample i
    return cross_entropy_label_smooth(logits.reshape(b * p, c), flat_labels, epsilon) * p


class CrossEntropyLabelSmooth(nn.Module):
    """``nn.Module`` form of :func:`parts_cross_entropy` (MSPLR eq. 5 ``L_ID``; for ``(B, p,
    C)`` logits the sum over parts)."""

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ConfigError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
        self.epsilon = float(epsilon)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return parts_cross_entropy(logits, labels, self.epsilon)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"
