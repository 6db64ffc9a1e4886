"""Rebuild a model from an adaptreid checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..models import ReidModel
from ..models.build import model_from_arch
from .checkpoint import load_checkpoint


def model_from_checkpoint(path: str | Path) -> tuple[ReidModel, dict[str, Any]]:
    """Load ``path`` (weights_only) and rebuild its model. Returns ``(model, info)`` with
    ``info`` holding ``height``, ``width``, ``epoch`` and the saved ``config`` when present.

    A checkpoint whose weights do not fit its architecture raises :class:`CheckpointError`
    listing the mismatched keys."""
    state = load_checkpoint(path)
    if "arch" not in state or "model" not in state:
        raise CheckpointError(
            f"{path} is not an adaptreid checkpoint (expected 'arch' and 'model' entries, found "
            f"{sorted(state)[:8]}). For plain backbone weights use --backbone NAME --weights PATH"
        )
    model = model_from_arch(state["arch"])
    load_model_state(model, state["model"], source=str(path))
    info: dict[str, Any] = {"epoch": state.get("epoch"), "config": state.get("config")}
    if "input_size" in state:
        info["height"], info["width"] = (int(v) for v in state["input_size"])
    return model, info


def load_model_state(model: ReidModel, sd: dict, *, source: str) -> None:
    """``load_state_dict`` with an error that lists missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                more = f" (+{len(keys) - 6} more)" if len(keys) > 6 else ""
                parts.append(f"{title}: {', '.join(keys[:6])}{more}")
        raise CheckpointError(
            f"{source}: the weights do not fit the architecture {model.arch.get('backbone')!r}; "
            + "; ".join(parts)
        )
    model.load_state_dict(sd)
