"""Worker for tests/test_distributed.py: optimisation steps of the project's Trainer, alone or
under torchrun (gloo), on one fixed batch of 8 images, then this process's weights and
centre-loss centres after each step go to OUT/<tag>_rank<r>_w<world>.pt.

Usage: ``ddp_worker.py OUT`` (single process: writes ``full`` = steps on the whole batch and
``half`` = steps on its first half, the negative control) or, under torchrun with 2 ranks,
``ddp_worker.py OUT`` (writes ``ddp``: rank r steps on half r of the batch).

Why the comparison can be exact (up to float rounding of sums in another order):

- every BatchNorm layer is kept in eval mode (fixed statistics), so no layer's output depends
  on which other images share its batch;
- the loss is label-smoothed cross-entropy + centre loss, both means over the batch (the
  batch-hard triplet term, whose mining depends on the batch, is switched off);
- DDP averages the parameters' gradients over the ranks and the Trainer averages the centre
  gradients: the mean of two half-batch means is the full-batch mean;
- the optimiser is SGD, whose step is linear in the gradient. (Adam's first step is about
  ``lr * sign(g)``, which turns rounding noise in near-zero gradients into whole steps.)
"""

import sys
import types
from pathlib import Path

import torch
from torch import nn

from adaptreid.engine.optim import OptimizerSettings, build_optimizer
from adaptreid.engine.trainer import Stage, Trainer
from adaptreid.losses.reid_loss import ReidLoss
from adaptreid.models import build_model
from adaptreid.runtime import distributed as D

STEPS = 2  # one step per epoch: epoch 1 with the body frozen (MSPLR), epoch 2 all trainable
BATCH = 8
NUM_IDS = 4


def fixed_batch() -> dict[str, torch.Tensor]:
    """8 images of 4 identities (2 each), the same in every process."""
    g = torch.Generator().manual_seed(1234)
    return {
        "img": torch.randn(BATCH, 3, 32, 16, generator=g),
        "pid": torch.arange(NUM_IDS).repeat_interleave(BATCH // NUM_IDS),
        "camid": torch.zeros(BATCH, dtype=torch.long),
        "index": torch.arange(BATCH),
    }


def keep_batchnorm_in_eval(model: nn.Module) -> None:
    """BatchNorm layers ignore ``train()``: they normalise with their (fixed) running
    statistics, so a sample's output does not depend on the rest of its batch."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), m)


def run_steps(batch: dict[str, torch.Tensor], device: torch.device) -> list[dict]:
    """``STEPS`` Trainer epochs of one step each on ``batch``, from the seeded initial state.
    Returns the weights and centres after each step."""
    torch.manual_seed(0)  # same initial weights and centres in every process
    model = build_model("resnet18", num_classes=NUM_IDS)
    keep_batchnorm_in_eval(model)
    # MSPLR eq. 5 without its triplet term: label-smoothed CE + 0.005 centre loss
    crit = ReidLoss(NUM_IDS, model.feat_dim, triplet_weight=0.0, center_weight=0.005)
    opt = build_optimizer(
        model, OptimizerSettings(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    )
    stage = Stage(
        crit,
        opt,
        [batch],  # the loader: one batch per epoch
        epochs=STEPS,
        extra_optimizers=[crit.center_optimizer(0.5)],
        freeze_epochs=1,
    )
    trainer = Trainer(model, stage, device=device, verbose=False)
    states = [{"model": _copy(model.state_dict()), "center": crit.center.centers.detach().clone()}]
    for epoch in range(1, STEPS + 1):
        trainer.train_epoch(epoch)
        states.append(
            {"model": _copy(model.state_dict()), "center": crit.center.centers.detach().clone()}
        )
    return states


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def main(out: str) -> None:
    torch.set_num_threads(1)
    _, world, device = D.init("cpu")
    batch = fixed_batch()
    if world == 1:
        half = {k: v[: BATCH // 2] for k, v in batch.items()}
        results = {"full": run_steps(batch, device), "half": run_steps(half, device)}
    else:
        size = BATCH // world
        mine = {k: v[D.rank() * size : (D.rank() + 1) * size] for k, v in batch.items()}
        results = {"ddp": run_steps(mine, device)}
    for tag, states in results.items():
        torch.save(
            {"states": states, "world": world, "rank": D.rank()},
            Path(out) / f"{tag}_rank{D.rank()}_w{world}.pt",
        )
    D.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
