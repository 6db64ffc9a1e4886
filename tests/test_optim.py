"""Optimiser groups, the MSPLR eq. 6 / PAST schedules, and body freezing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adaptreid.engine.optim import (
    MSPLR_SCHEDULE,
    PAST_LR_DECAY,
    OptimizerSettings,
    ParamGroup,
    WarmupMultiStepLR,
    build_optimizer,
    multistep_factor,
    warmup_multistep_factor,
)
from adaptreid.errors import ConfigError


class Tiny(nn.Module):
    """Body (conv + BN) and head (BN neck + classifier), with the ReidModel-style iterators."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.neck = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 5, bias=False)

    def body_parameters(self):
        return self.body.parameters()

    def head_parameters(self):
        return iter([*self.neck.parameters(), *self.fc.parameters()])

    def forward(self, x):
        return self.fc(self.neck(self.body(x).mean((2, 3))))


# ------------------------------------------------------------------------------- scheduler
# MSPLR eq. 6 (read as 3.5e-4 * epoch / 10 during warm-up; see WarmupMultiStepLR's docstring)
MSPLR_EXPECTED = {
    1: 3.5e-5,
    5: 1.75e-4,
    10: 3.5e-4,
    11: 3.5e-4,
    40: 3.5e-4,
    41: 3.5e-5,
    70: 3.5e-5,
    71: 3.5e-6,
    90: 3.5e-6,
}


def _run_epochs(sched, opt, n, start=1):
    """The lrs in force during epochs start..start+n-1, stepping after each epoch as a
    trainer does."""
    seen = {}
    for epoch in range(start, start + n):
        seen[epoch] = [g["lr"] for g in opt.param_groups]
        assert sched.epoch == epoch
        opt.step()
        sched.step()
    return seen


def test_msplr_schedule_values():
    model = Tiny()
    opt = build_optimizer(model, OptimizerSettings("adam", lr=3.5e-4))
    sched = WarmupMultiStepLR(opt)  # defaults = MSPLR_SCHEDULE
    seen = _run_epochs(sched, opt, 90)
    for epoch, lr in MSPLR_EXPECTED.items():
        assert seen[epoch][0] == pytest.approx(lr, rel=1e-9), epoch
        assert sched.lr_at(epoch)[0] == pytest.approx(lr, rel=1e-9)
    # warm-up is exactly 3.5e-4 * epoch / 10
    for epoch in range(1, 11):
        assert seen[epoch][0] == pytest.approx(3.5e-4 * epoch / 10, rel=1e-9)


def test_warmup_factor_variants():
    # bag-of-tricks code value: ramp from 0.01 at epoch 1 to 1 at the end of warm-up
    assert warmup_multistep_factor(1, warmup_factor=0.01) == pytest.approx(0.01)
    assert warmup_multistep_factor(10, warmup_factor=0.01) == pytest.approx(1.0)
    assert warmup_multistep_factor(1, (5,), warmup_epochs=0) == 1.0
    assert warmup_multistep_factor(6, (5,), warmup_epochs=0) == pytest.approx(0.1)
    assert warmup_multistep_factor(1, warmup_epochs=1) == 1.0
    with pytest.raises(ValueError):
        warmup_multistep_factor(0)


def test_scheduler_keeps_group_ratios():
    model = Tiny()
    opt = build_optimizer(
        model, OptimizerSettings("sgd", lr=0.01), groups={"body": 0.1, "head": 1.0}
    )
    sched = WarmupMultiStepLR(opt, milestones=(3, 6), warmup_epochs=2, warmup_factor=0.5)
    seen = _run_epochs(sched, opt, 8)
    for epoch, (body_lr, head_lr) in seen.items():
        assert head_lr / body_lr == pytest.approx(10.0)
        assert head_lr == pytest.approx(0.01 * sched.factor(epoch))
    assert [seen[e][1] for e in (1, 2, 3, 4, 7)] == pytest.approx(
        [0.005, 0.01, 0.01, 0.001, 0.0001]
    )


def test_scheduler_state_dict_round_trip():
    def make():
        model = Tiny()
        opt = build_optimizer(model, OptimizerSettings("adam", lr=3.5e-4), groups={"body": 0.5})
        return opt, WarmupMultiStepLR(opt, **MSPLR_SCHEDULE)

    opt, sched = make()
    _run_epochs(sched, opt, 38)
    state_s, state_o = copy.deepcopy(sched.state_dict()), copy.deepcopy(opt.state_dict())
    ref = _run_epochs(sched, opt, 5, start=39)

    opt2, sched2 = make()
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    got = _run_epochs(sched2, opt2, 5, start=39)
    assert list(got) == list(ref) == [39, 40, 41, 42, 43]
    assert sum(got.values(), []) == pytest.approx(sum(ref.values(), []), rel=1e-12)
    assert got[40][0] == pytest.approx(3.5e-4 * 0.5) and got[41][1] == pytest.approx(3.5e-5)


def test_scheduler_bad_options():
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], OptimizerSettings(lr=1.0))
    for kwargs in (
        {"milestones": (70, 40)},
        {"milestones": (0, 4)},
        {"gamma": 0.0},
        {"warmup_factor": 0.0},
        {"warmup_epochs": -1},
    ):
        with pytest.raises(ConfigError):
            WarmupMultiStepLR(opt, **kwargs)


def test_past_decay_after_three_iterations():
    factors = [multistep_factor(t, **PAST_LR_DECAY) for t in (1, 2, 3, 4, 5)]
    assert factors == pytest.approx([1, 1, 1, 0.1, 0.1])
    opt = build_optimizer(
        [
            ParamGroup(Tiny().body_parameters(), name="fine_tune", lr=1e-4),
            {"params": [nn.Parameter(torch.zeros(3, 3))], "name": "embedding", "lr": 2e-4},
        ],
        OptimizerSettings("sgd", lr=1e-4),
    )
    assert [g["name"] for g in opt.param_groups] == ["fine_tune", "embedding"]


# ------------------------------------------------------------------------------- optimiser
def test_sgd_param_groups_from_model():
    model = Tiny()
    opt = build_optimizer(
        model,
        OptimizerSettings("sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True),
        groups={"body": 0.1, "head": 1.0},
    )
    assert isinstance(opt, torch.optim.SGD)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"body", "head"}
    assert groups["body"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == 0.1
    assert groups["body"]["lr_mult"] == pytest.approx(0.1)
    assert all(g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)
    assert all(g["weight_decay"] == 5e-4 for g in opt.param_groups)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))


def test_unlisted_parameters_go_to_other_and_bias_decay_split():
    model = Tiny()
    opt = build_optimizer(
        model, OptimizerSettings("adam", lr=1e-3, bias_weight_decay=0.0), groups={"body": 0.5}
    )
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"body", "body.no_decay", "other", "other.no_decay"}
    assert [p.shape for p in groups["body"]["params"]] == [model.body[0].weight.shape]
    assert groups["body.no_decay"]["weight_decay"] == 0.0
    assert groups["body.no_decay"]["lr"] == pytest.approx(5e-4)
    assert groups["other"]["params"][0] is model.fc.weight
    assert groups["other"]["weight_decay"] == 5e-4


def test_optimizer_errors():
    model = Tiny()
    with pytest.raises(ConfigError, match="unknown optimizer"):
        build_optimizer(model, OptimizerSettings("adagrad"))
    with pytest.raises(ConfigError, match="tail_parameters"):
        build_optimizer(model, groups={"tail": 1.0})
    with pytest.raises(ConfigError, match="groups"):
        build_optimizer(model.parameters(), groups={"body": 1.0})
    with pytest.raises(ConfigError, match="optimizer groups"):
        build_optimizer([ParamGroup(model.parameters(), "a"), ParamGroup(model.parameters(), "b")])
    with pytest.raises(ConfigError):
        build_optimizer(model, OptimizerSettings(lr=0.0))
    with pytest.raises(ConfigError, match="nesterov"):
        build_optimizer(model, OptimizerSettings("adam", nesterov=True))
    with pytest.raises(ConfigError):
        build_optimizer([{"params": model.parameters(), "momentum": 0.5}])
    with pytest.raises(ConfigError, match="no parameters"):
        build_optimizer([])


def test_adamw_and_plain_parameter_list():
    ps = [nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))]
    opt = build_optimizer(ps, OptimizerSettings("adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[0]["name"] == "all"
