"""Worker for tests/test_distributed.py: trains a tiny model with the Trainer, alone or under
torchrun (gloo), then writes this rank's weights and per-epoch losses to OUT/rank<r>.pt."""

import sys
from pathlib import Path

import torch

from adaptreid.config import load_config
from adaptreid.data.datasets import build_dataset, relabel
from adaptreid.engine import distributed as D
from adaptreid.engine.trainer import Trainer
from adaptreid.losses.reid_loss import build_reid_loss
from adaptreid.methods.common import (
    model_from_cfg,
    optimizer_from_cfg,
    seed_everything,
    train_loader,
)


def main(data_root: str, out: str, epochs: int) -> None:
    torch.set_num_threads(1)
    _, _, device = D.init("cpu")
    cfg = load_config(
        None,
        [
            "data.height=32",
            "data.width=16",
            "data.batch_size=8",
            "data.num_instances=2",
            "data.num_workers=0",
            "model.backbone=resnet18",
            "optim.warmup_epochs=1",
            "optim.milestones=[100]",
            "loss.center_weight=0.005",
        ],
    )
    seed_everything(0)
    train, pids = relabel(build_dataset("market1501", data_root).train)
    model = model_from_cfg(cfg, len(pids))
    crit = build_reid_loss(cfg.loss, len(pids), model.feat_dim)
    opt, sched = optimizer_from_cfg(cfg, model)
    trainer = Trainer(
        model,
        crit,
        opt,
        train_loader(cfg, train),
        device=device,
        scheduler=sched,
        extra_optimizers=[crit.center_optimizer(0.5)],
        freeze_epochs=1,
        verbose=False,
    )
    losses = [trainer.train_epoch(e)["loss"] for e in range(1, epochs + 1)]
    torch.save(
        {
            "model": model.state_dict(),
            "center": crit.center.centers.detach(),
            "losses": losses,
            "world": D.world_size(),
        },
        Path(out) / f"rank{D.rank()}_w{D.world_size()}.pt",
    )
    D.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
