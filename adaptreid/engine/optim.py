"""Optimisers, learning-rate schedules and body freezing for source training and the methods.

* :func:`build_optimizer`: Adam / AdamW / SGD over explicit parameter groups, each with its
  own learning rate (absolute, or a multiplier of the base lr), optional zero weight decay on
  biases and normalisation weights.
* :class:`WarmupMultiStepLR`: linear warm-up then step decay, per epoch; its defaults are
  MSPLR's eq. 6 (section 3.6.1; the bag-of-tricks schedule).
* :func:`multistep_factor`: PAST's "after 3 iterations, all learning rates are multiplied
  by 0.1" (section 3.1), for methods that build a new optimiser at every stage.

(Freezing the body, MSPLR section 3.6.2, is :meth:`adaptreid.models.ReidModel.freeze_body`.)

Conventions: epochs (and PAST iterations) are **1-based**, as in the papers, and a milestone
``m`` means "decayed for every epoch ``> m``" (MSPLR eq. 6: ``10 < epoch <= 40`` runs at the
base lr, ``40 < epoch <= 70`` at a tenth of it).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..errors import ConfigError

__all__ = [
    "MSPLR_SCHEDULE",
    "PAST_LR_DECAY",
    "OptimizerSettings",
    "ParamGroup",
    "WarmupMultiStepLR",
    "build_optimizer",
    "multistep_factor",
    "warmup_multistep_factor",
]

_OPTIMIZERS = ("adam", "adamw", "sgd")


# ---------------------------------------------------------------------------------------------
# optimiser
# ---------------------------------------------------------------------------------------------
@dataclass
class ParamGroup:
    """One parameter group for :func:`build_optimizer`.

    Args:
        params: the parameters (frozen ones included: an optimiser skips parameters whose
            ``grad`` is ``None``, and including them lets a body frozen now train later).
        name: a label, kept in the torch param group as ``group["name"]`` (for logging).
        lr: absolute learning rate; when ``None`` the group uses ``lr_mult * base lr``.
        lr_mult: multiplier of the base learning rate (used only when ``lr`` is ``None``).
        weight_decay: this group's weight decay; ``None`` uses the optimiser's.
    """

    params: Iterable[nn.Parameter]
    name: str = "default"
    lr: float | None = None
    lr_mult: float = 1.0
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        self.params = list(self.params)  # an iterator would be exhausted after one use


def _as_groups(params: Any, groups: Mapping[str, float] | None) -> list[ParamGroup]:
    """Normalise the accepted inputs of :func:`build_optimizer` to a list of ParamGroup."""
    if isinstance(params, nn.Module):
        model = params
        if not groups:
            return [ParamGroup(model.parameters(), name="all")]
        out: list[ParamGroup] = []
        for part, mult in groups.items():
            getter = getattr(model, f"{part}_parameters", None)
            if not callable(getter):
                raise ConfigError(
                    f"optimizer group {part!r}: {type(model).__name__} has no "
                    f"{part}_parameters() method (known groups are e.g. 'body', 'head')"
                )
            out.append(ParamGroup(getter(), name=part, lr_mult=float(mult)))
        claimed = {id(p) for g in out for p in g.params}
        rest = [p for p in model.parameters() if id(p) not in claimed]
        if rest:
            out.append(ParamGroup(rest, name="other"))
        return out

    if groups:
        raise ConfigError("optimizer 'groups' (name -> lr multiplier) needs a model (nn.Module)")
    if isinstance(params, torch.Tensor):
        params = [params]
    items = list(params)
    if not items:
        raise ConfigError("optimizer got no parameters")
    if all(isinstance(x, torch.Tensor) for x in items):
        return [ParamGroup(items, name="all")]
    out = []
    for i, x in enumerate(items):
        if isinstance(x, ParamGroup):
            out.append(x)
        elif isinstance(x, Mapping):
            unknown = set(x) - {"params", "name", "lr", "lr_mult", "weight_decay"}
            if "params" not in x or unknown:
                raise ConfigError(
                    f"optimizer param group {i}: needs 'params' and only 'name', 'lr', "
                    f"'lr_mult', 'weight_decay'; got keys {sorted(x)}"
                )
            ps = x["params"]
            out.append(
                ParamGroup(
                    [ps] if isinstance(ps, torch.Tensor) else ps,
                    name=str(x.get("name", f"group{i}")),
                    lr=x.get("lr"),
                    lr_mult=float(x.get("lr_mult", 1.0)),
                    weight_decay=x.get("weight_decay"),
                )
            )
        else:
            raise ConfigError(
                f"optimizer param group {i}: expected a ParamGroup, a dict or parameters, "
                f"got {type(x).__name__} (do not mix bare parameters and groups)"
            )
    return out


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimiser of :func:`build_optimizer` and its hyperparameters.

    Defaults are MSPLR's (section 3.6.1: Adam, base lr 3.5e-4, the bag-of-tricks
    weight decay 5e-4). PAST (section 3.1) is ``name="sgd", momentum=0.9,
    weight_decay=5e-4`` with one group per learning rate."""

    name: str = "adam"
    """``"adam"``, ``"adamw"`` or ``"sgd"``."""
    lr: float = 3.5e-4
    """Base learning rate (groups without an absolute ``lr`` use ``lr_mult * lr``)."""
    weight_decay: float = 5e-4
    """Default weight decay (coupled L2 for Adam and SGD, decoupled for AdamW)."""
    momentum: float = 0.9
    """SGD only."""
    nesterov: bool = False
    """Nesterov momentum; SGD with ``momentum > 0`` only."""
    bias_weight_decay: float | None = None
    """If set, parameters with ``ndim <= 1`` (biases and normalisation weights / biases) get
    this weight decay, e.g. 0; they are split into a sibling group named
    ``"<name>.no_decay"`` with the same learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam / AdamW betas."""

    @classmethod
    def from_config(cls, o: Any, *, lr: float | None = None) -> OptimizerSettings:
        """From ``optim.*`` (an :class:`~adaptreid.config.OptimConfig`): ``name``, ``lr``
        (``lr`` given here instead when not None), ``weight_decay``, ``momentum``."""
        return cls(
            name=o.name,
            lr=o.lr if lr is None else lr,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
        )


def build_optimizer(
    params: nn.Module | Iterable[nn.Parameter] | Iterable[ParamGroup | Mapping[str, Any]],
    settings: OptimizerSettings | None = None,
    *,
    groups: Mapping[str, float] | None = None,
) -> Optimizer:
    """Build an optimiser with per-group learning rates, as ``settings`` says (default:
    :class:`OptimizerSettings`'s, MSPLR's Adam).

    Args:
        params: one of

            * a model (``nn.Module``): all its parameters, or, with ``groups``, one group per
              named part: ``groups={"body": 0.5, "head": 1.0}`` puts
              ``model.body_parameters()`` at ``0.5 * lr`` and ``model.head_parameters()`` at
              ``lr``; parameters in no listed part form a group ``"other"`` at ``lr``;
            * an iterable of parameters: one group at ``lr``;
            * an iterable of :class:`ParamGroup` (or dicts with the same keys: ``params``,
              ``name``, ``lr`` (absolute), ``lr_mult``, ``weight_decay``).
        settings: the optimiser (``name``) and its ``lr``, ``weight_decay``, ``momentum``,
            ``nesterov``, ``bias_weight_decay``, ``betas`` (see :class:`OptimizerSettings`).
        groups: part name -> lr multiplier, only with a model (see above).

    Each torch param group carries ``name`` and ``lr_mult`` keys besides torch's own, and the
    schedulers here scale every group's own initial lr, so the ratios between groups are kept.

    Raises:
        ConfigError: unknown optimiser, bad values, a parameter in two groups, no parameters.
    """
    st = settings or OptimizerSettings()
    name, lr, weight_decay, momentum = st.name, st.lr, st.weight_decay, st.momentum
    nesterov, bias_weight_decay, betas = st.nesterov, st.bias_weight_decay, st.betas
    key = str(name).lower()
    if key not in _OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(_OPTIMIZERS)}")
    if not lr > 0:
        raise ConfigError(f"optimizer lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"optimizer weight_decay must be >= 0, got {weight_decay}")
    if bias_weight_decay is not None and bias_weight_decay < 0:
        raise ConfigError(f"bias_weight_decay must be >= 0, got {bias_weight_decay}")
    if key == "sgd" and momentum < 0:
        raise ConfigError(f"SGD momentum must be >= 0, got {momentum}")
    if nesterov and (key != "sgd" or momentum <= 0):
        raise ConfigError("nesterov needs name='sgd' and momentum > 0")

    torch_groups: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for g in _as_groups(params, groups):
        g_lr = float(g.lr) if g.lr is not None else lr * g.lr_mult
        if not g_lr > 0:
            raise ConfigError(f"optimizer group {g.name!r}: lr must be > 0, got {g_lr}")
        g_wd = weight_decay if g.weight_decay is None else float(g.weight_decay)
        if g_wd < 0:
            raise ConfigError(f"optimizer group {g.name!r}: weight_decay must be >= 0")
        for p in g.params:
            if id(p) in seen:
                raise ConfigError(
                    f"a parameter of shape {tuple(p.shape)} is in optimizer groups "
                    f"{seen[id(p)]!r} and {g.name!r}"
                )
            seen[id(p)] = g.name
        split: list[tuple[str, list[nn.Parameter], float]]
        if bias_weight_decay is None:
            split = [(g.name, list(g.params), g_wd)]
        else:
            split = [
                (g.name, [p for p in g.params if p.ndim > 1], g_wd),
                (f"{g.name}.no_decay", [p for p in g.params if p.ndim <= 1], bias_weight_decay),
            ]
        for g_name, ps, wd in split:
            if ps:  # empty parts (e.g. a head without parameters) are dropped
                mult = g_lr / lr
                torch_groups.append(
                    {"params": ps, "lr": g_lr, "weight_decay": wd, "name": g_name, "lr_mult": mult}
                )
    if not torch_groups:
        raise ConfigError("optimizer got no parameters")

    if key == "sgd":
        return torch.optim.SGD(torch_groups, lr=lr, momentum=momentum, nesterov=nesterov)
    cls = torch.optim.Adam if key == "adam" else torch.optim.AdamW
    return cls(torch_groups, lr=lr, betas=betas)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
#: MSPLR eq. 6 (= the bag-of-tricks schedule) with base lr 3.5e-4: see WarmupMultiStepLR.
MSPLR_SCHEDULE: dict[str, Any] = {
    "milestones": (40, 70),
    "gamma": 0.1,
    "warmup_epochs": 10,
    "warmup_factor": 0.1,
}
#: PAST (section 3.1): "after 3 iterations, all learning rates are multiplied by 0.1".
PAST_LR_DECAY: dict[str, Any] = {"milestones": (3,), "gamma": 0.1}


def _check_milestones(milestones: Sequence[int]) -> tuple[int, ...]:
    ms = tuple(int(m) for m in milestones)
    if any(m != mm for m, mm in zip(ms, milestones)) or any(m < 1 for m in ms):
        raise ConfigError(f"milestones must be positive integers, got {list(milestones)}")
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise ConfigError(f"milestones must be strictly increasing, got {list(ms)}")
    return ms


def multistep_factor(t: int, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """``gamma ** (number of milestones m with t > m)`` for a 1-based epoch / iteration ``t``.

    PAST: ``multistep_factor(iteration, **PAST_LR_DECAY)`` is 1 for iterations 1-3 and 0.1
    from iteration 4 on.
    """
    ms = _check_milestones(milestones)
    return float(gamma) ** bisect.bisect_left(ms, int(t))


def warmup_multistep_factor(
    epoch: int,
    milestones: Sequence[int] = (40, 70),
    gamma: float = 0.1,
    warmup_epochs: int = 10,
    warmup_factor: float = 0.1,
) -> float:
    """Multiplier of the base lr at a 1-based ``epoch`` (see :class:`WarmupMultiStepLR`)."""
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got {epoch}")
    f = multistep_factor(epoch, milestones, gamma)
    if epoch <= warmup_epochs:
        if warmup_epochs == 1:
            w = 1.0
        else:
            w = warmup_factor + (1.0 - warmup_factor) * (epoch - 1) / (warmup_epochs - 1)
        f *= w
    return f


class WarmupMultiStepLR(LRScheduler):
    """Linear warm-up then step decay, stepped once per epoch (MSPLR eq. 6, bag of tricks).

    With 1-based ``epoch`` and base lr ``lr_0`` (each param group's own initial lr, so the
    ratios between groups are kept)::

        lr(epoch) = lr_0 * w(epoch) * gamma ** #{m in milestones : epoch > m}
        w(epoch)  = warmup_factor + (1 - warmup_factor) * (epoch - 1) / (warmup_epochs - 1)
                    for epoch <= warmup_epochs, else 1

    i.e. a straight line from ``warmup_factor * lr_0`` at epoch 1 to ``lr_0`` at epoch
    ``warmup_epochs``. With ``warmup_factor = 1 / warmup_epochs`` the line is exactly
    ``lr_0 * epoch / warmup_epochs``.

    The defaults (:data:`MSPLR_SCHEDULE`) with Adam at ``lr_0 = 3.5e-4`` give MSPLR's eq. 6::

        lr = 3.5e-4 * epoch / 10   epoch <= 10      (3.5e-5 at epoch 1 ... 3.5e-4 at epoch 10)
             3.5e-4                10 < epoch <= 40
             3.5e-5                40 < epoch <= 70
             3.5e-6                epoch > 70

    **Reading of eq. 6.** The extracted text of the paper prints the first line as
    ``3.5e-5 * epoch / 10``. We read it as ``3.5e-4 * epoch / 10``: (1) only then is the
    schedule continuous at epoch 10 -> 11 (the printed form would end the warm-up at 3.5e-5
    and then jump tenfold to 3.5e-4); (2) MSPLR says the schedule "is based on [21]", the
    bag of tricks (Luo et al. 2019), whose text describes the warm-up as "linearly increasing
    the learning rate from 3.5e-5 to 3.5e-4" over 10 epochs, i.e. ``3.5e-4 * epoch / 10``
    with epoch 1 at 3.5e-5; the printed ``3.5e-5`` reads as the warm-up's *starting* value
    slipped into the formula. (The bag-of-tricks code, with ``warmup_factor=0.01`` and an
    epoch counter starting at 0, ramps slightly differently - 3.5e-6 to 3.15e-4, then 3.5e-4 -
    but also reaches 3.5e-4 at the end of the warm-up; ``warmup_factor=0.01`` here gives a
    ramp from 3.5e-6 at epoch 1 to 3.5e-4 at epoch 10.)

    Usage: build it right after the optimiser, train epoch 1, call :meth:`step`, train epoch
    2, ... (``step()`` *after* each epoch, torch's convention). :meth:`lr_at` gives the lrs of
    any epoch without stepping. ``state_dict`` / ``load_state_dict`` come from torch's
    ``LRScheduler`` and restore the epoch counter and the schedule's parameters.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[int] = MSPLR_SCHEDULE["milestones"],
        gamma: float = MSPLR_SCHEDULE["gamma"],
        warmup_epochs: int = MSPLR_SCHEDULE["warmup_epochs"],
        warmup_factor: float = MSPLR_SCHEDULE["warmup_factor"],
        last_epoch: int = -1,
    ) -> None:
        self.milestones = _check_milestones(milestones)
        if not gamma > 0:
            raise ConfigError(f"scheduler gamma must be > 0, got {gamma}")
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs}")
        if not 0 < warmup_factor <= 1:
            raise ConfigError(f"warmup_factor must be in (0, 1], got {warmup_factor}")
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_factor = float(warmup_factor)
        super().__init__(optimizer, last_epoch)

    @property
    def epoch(self) -> int:
        """The 1-based epoch whose learning rates are currently set (1 before any step)."""
        return self.last_epoch + 1

    def factor(self, epoch: int) -> float:
        """Multiplier of each group's initial lr at the 1-based ``epoch``."""
        return warmup_multistep_factor(
            epoch, self.milestones, self.gamma, self.warmup_epochs, self.warmup_factor
        )

    def lr_at(self, epoch: int) -> list[float]:
        """Learning rates of every param group at the 1-based ``epoch``."""
        f = self.factor(epoch)
        return [float(base) * f for base in self.base_lrs]

    def get_lr(self) -> list[float]:  # closed form: independent of the current lrs
        return self.lr_at(self.last_epoch + 1)

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()
