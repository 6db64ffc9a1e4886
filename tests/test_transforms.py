"""Transforms: shapes, determinism, erasing bounds, colour change range, flip, ToTensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adaptreid.data.transforms import (
    IMAGENET_MEAN,
    Augmentation,
    Compose,
    Normalize,
    Pad,
    RandomColorChange,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    build_transforms,
)


def _image(h: int = 20, w: int = 10, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def test_to_tensor_matches_numpy():
    img = _image(5, 7)
    x = ToTensor()(img)
    expected = np.asarray(img).transpose(2, 0, 1).astype(np.float32) / 255.0
    assert x.dtype == torch.float32 and x.shape == (3, 5, 7)
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-7)


def test_resize_is_pil_bilinear_and_normalize():
    img = _image(30, 12)
    out = Resize((16, 8))(img)
    assert out.size == (8, 16)
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((8, 16), Image.BILINEAR)))
    x = torch.rand(3, 4, 4)
    y = Normalize()(x)
    assert torch.allclose(y[1], (x[1] - 0.456) / 0.224)
    with pytest.raises(ValueError, match="height, width"):
        Resize(16)


def test_flip_correctness_pil_and_tensor():
    img = _image(4, 6)
    flip = RandomHorizontalFlip(p=1.0)
    assert np.array_equal(np.asarray(flip(img)), np.asarray(img)[:, ::-1])
    x = ToTensor()(img)
    assert torch.equal(flip(x), x.flip(-1))
    assert RandomHorizontalFlip(p=0.0)(img) is img


def test_pad_then_crop():
    img = _image(16, 8)
    padded = Pad(2, fill=0)(img)
    assert padded.size == (12, 20)
    arr = np.asarray(padded)
    assert arr[:2].max() == 0 and arr[:, :2].max() == 0
    assert np.array_equal(arr[2:-2, 2:-2], np.asarray(img))
    torch.manual_seed(1)
    crops = {np.asarray(RandomCrop((16, 8))(padded)).tobytes() for _ in range(30)}
    assert len(crops) > 1
    assert all(len(c) == 16 * 8 * 3 for c in crops)
    t = ToTensor()(img)
    assert Pad(3)(t).shape == (3, 22, 14)
    with pytest.raises(ValueError, match="smaller than the crop"):
        RandomCrop((32, 8))(img)


def test_train_pipeline_shapes_and_determinism():
    tf = build_transforms(32, 16, train=True, augmentation=Augmentation(color_change=True))
    img = _image(50, 21)
    torch.manual_seed(123)
    a = torch.stack([tf(img) for _ in range(8)])
    torch.manual_seed(123)
    b = torch.stack([tf(img) for _ in range(8)])
    assert a.shape == (8, 3, 32, 16)
    assert torch.equal(a, b)
    assert any(not torch.equal(a[0], a[i]) for i in range(1, 8))  # random across calls
    names = [type(t).__name__ for t in tf.transforms]
    assert names == [
        "Resize",
        "RandomHorizontalFlip",
        "Pad",
        "RandomCrop",
        "RandomColorChange",
        "ToTensor",
        "Normalize",
        "RandomErasing",
    ]
    assert "RandomErasing(p=0.5" in repr(tf) and repr(tf).startswith("Compose([")


def test_test_pipeline_is_deterministic_resize_tensor_normalise():
    tf = build_transforms(32, 16, train=False)
    assert [type(t).__name__ for t in tf.transforms] == ["Resize", "ToTensor", "Normalize"]
    img = _image(64, 32)
    expected = Normalize()(ToTensor()(img.resize((16, 32), Image.BILINEAR)))
    assert torch.equal(tf(img), expected)
    assert isinstance(tf, Compose)


def test_random_erasing_fill_and_area_bounds():
    erase = RandomErasing(p=1.0, mean=(7.0, 8.0, 9.0))
    torch.manual_seed(0)
    H, W = 64, 32
    areas = []
    for _ in range(200):
        x = torch.zeros(3, H, W)
        y = erase(x)
        assert torch.equal(x, torch.zeros(3, H, W))  # input untouched
        mask = y[0] != 0
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert int(mask.sum()) == h * w  # one rectangle
        assert torch.all(y[:, mask] == torch.tensor([7.0, 8.0, 9.0]).view(3, 1))
        areas.append(h * w / (H * W))
    # seeded draws (torch's CPU generator gives the same numbers on every machine); the
    # bounds are the sampler's own range (+ rounding slack) and a mean far from its edges
    assert min(areas) >= 0.02 * 0.8 and max(areas) <= 0.4 * 1.2  # rounding slack
    assert np.mean(areas) > 0.1
    x = torch.ones(3, H, W)
    assert torch.equal(RandomErasing(p=0.0)(x), x)
    assert RandomErasing().mean == IMAGENET_MEAN


def test_color_change_factor_range_and_choice():
    cc = RandomColorChange(brightness=0.2, contrast=0.15, p=0.5)
    torch.manual_seed(0)
    draws = [cc.sample() for _ in range(2000)]
    # seeded, so the same on every machine; the count bounds are > 5 standard deviations wide
    # (binomial: sd 22 for "none", 19 for each kind) so that any seed would pass too
    none = sum(d is None for d in draws)
    assert 850 < none < 1150
    bright = [f for d in draws if d and d[0] == "brightness" for f in [d[1]]]
    contrast = [f for d in draws if d and d[0] == "contrast" for f in [d[1]]]
    assert 400 < len(bright) < 600 and 400 < len(contrast) < 600
    assert 0.8 <= min(bright) < 0.82 and 1.18 < max(bright) <= 1.2
    assert 0.85 <= min(contrast) < 0.87 and 1.13 < max(contrast) <= 1.15


def test_color_change_apply():
    x = torch.full((3, 2, 2), 0.5)
    assert torch.allclose(RandomColorChange.apply(x, "brightness", 1.2), torch.full_like(x, 0.6))
    x[:, 0, 0] = 1.0
    y = RandomColorChange.apply(x, "contrast", 0.0)
    assert torch.allclose(y, torch.full_like(x, 0.625))  # contrast 0 -> flat mean grey
    img = Image.new("RGB", (2, 2), (100, 100, 100))
    out = RandomColorChange.apply(img, "brightness", 1.1)
    assert np.asarray(out)[0, 0].tolist() == [110, 110, 110]
