"""Issue 29, item D: a ``model.pretrained`` file that leaves some of the backbone's tensors at
their initial values (another network's file, e.g. IBN-Net50-a's into a plain ResNet-50) is
an error naming the file, the counts and the first missing tensors, unless
``model.allow_partial_weights`` asks for it."""

from __future__ import annotations

import pytest
import torch

from adaptreid.config import load_config
from adaptreid.engine.builders import model_from_cfg
from adaptreid.errors import CheckpointError
from adaptreid.models import build_model, load_pretrained
from adaptreid.models.resnet import resnet18


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    sd = resnet18().state_dict()
    torch.save(sd, tmp_path / "whole.pth")
    part = {k: v for k, v in sd.items() if not k.startswith("layer1.0.bn1.")}
    torch.save(part, tmp_path / "part.pth")  # without layer1.0.bn1's 4 tensors (+ its counter)
    return tmp_path / "whole.pth", tmp_path / "part.pth", sd


def test_a_partial_file_is_refused_by_name_with_counts(files):
    whole, part, sd = files
    with pytest.raises(CheckpointError) as err:
        build_model("resnet18", pretrained=str(part))
    text = str(err.value)
    n_file = len(sd) - 5  # what the file holds; the model has 4 more to fill
    assert str(part) in text and "resnet18" in text
    assert f"fills {n_file} of the {n_file + 4} tensors" in text and "4 missing" in text
    assert "layer1.0.bn1.weight" in text and "model.allow_partial_weights=true" in text
    # nothing is loaded when refused
    body = resnet18()
    before = body.conv1.weight.clone()
    with pytest.raises(CheckpointError):
        load_pretrained(body, part, allow_partial=False)
    assert torch.equal(body.conv1.weight, before)
    # the whole file loads without the switch
    model = build_model("resnet18", pretrained=str(whole))
    assert torch.equal(model.backbone.conv1.weight, sd["conv1.weight"])


def test_the_config_switch_allows_it(files):
    _, part, sd = files
    args = ["model.backbone=resnet18", f"model.pretrained={part}"]
    with pytest.raises(CheckpointError, match="partial load"):
        model_from_cfg(load_config(None, args), 0)
    model = model_from_cfg(load_config(None, [*args, "model.allow_partial_weights=true"]), 0)
    assert torch.equal(model.backbone.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])
