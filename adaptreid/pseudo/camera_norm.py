"""Camera-guided feature normalisation (MSPLR, section 3.5, eq. 4).

Each camera view has its own colour, light and viewpoint statistics, so a model trained on a
source domain tends to group target images by camera rather than by person; the >= 2-camera
cluster selection rule (section 3.4) then throws most clusters away. MSPLR removes the
per-camera shift before clustering: every target training feature is z-scored with the mean
and standard deviation of *its own camera*::

    f_norm = (f - mu_c) / sigma_c                                     (eq. 4)

computed per dimension over the target training features of camera ``c``.

Choices this module makes (the paper leaves them open):

* ``sigma_c`` is the population standard deviation (``ddof = 0``): it is a statistic of the
  camera's feature set itself, not an estimate for unseen images, and it stays defined for a
  camera with a single image (where it is 0).
* Dimensions whose ``sigma_c < eps`` (constant over the camera, e.g. a ReLU unit that never
  fires there) are divided by 1 instead of 0: they become exactly 0 after centring, which is
  what their (absent) spread says. A camera with a single image has ``sigma_c = 0`` in every
  dimension, so all its features become the zero vector; a warning says so.
* A single-camera target is valid input: eq. 4 then is a plain global z-score (no camera
  shift is removed); a warning says so instead of failing.
* ``l2_after=True`` (default) L2-normalises the rows *after* eq. 4. Why: a z-scored D-dim
  feature has squared norm ~ D on average (every dimension has unit variance within its
  camera), so for the 2048-d IBN-ResNet50 features of the paper the rows have norm
  ~ sqrt(2048) ~ 45 and two images of different people lie ~ sqrt(2 * 2048) ~ 64 apart.
  Euclidean DBSCAN with the paper's eps = 0.35 (DukeMTMC) / 0.42 (Market-1501) would then find
  no neighbour at all: those eps values only make sense on a unit scale. With re-normalised
  rows the euclidean distance is ``sqrt(2 - 2 cos)`` in [0, 2], and eps = 0.42 means a cosine
  similarity above 1 - 0.42^2 / 2 ~ 0.91 - the usual scale of re-ID clustering. (The other
  unit-scale reading, a Jaccard distance in [0, 1], is ``distance="jaccard"`` in
  :func:`adaptreid.pseudo.labels.make_pseudo_labels`; the Jaccard distance is computed on the
  rows given to it, which are the re-normalised ones by default.) Use ``l2_after=False`` to get
  eq. 4 verbatim, e.g. for k-means, whose result does not depend on the global scale.
  Whatever the scale, ``adaptreid cluster --eps-sweep`` shows which eps suits the features.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["camera_normalize"]


def _camids_array(camids, n: int) -> np.ndarray:
    if isinstance(camids, torch.Tensor):
        camids = camids.detach().cpu().numpy()
    cams = np.asarray(camids)
    if cams.ndim != 1 or cams.shape[0] != n:
        raise ValueError(f"camids must have shape ({n},) to match the features, got {cams.shape}")
    return cams


def camera_normalize(feats, camids, eps: float = 1e-12, *, l2_after: bool = True):
    """Per-camera z-score of features (MSPLR section 3.5, eq. 4).

    Args:
        feats: (N, D) target training features, a ``torch.Tensor`` (any device) or a numpy
            array.
        camids: (N,) camera id of each feature (any hashable integer-like values).
        eps: standard deviations below ``eps`` are replaced by 1 (constant dimensions become
            0 instead of dividing by zero).
        l2_after: L2-normalise each row after eq. 4 (default). Needed for the paper's eps
            values (0.35 / 0.42) to be meaningful with euclidean DBSCAN; see the module
            docstring for the scale argument. All-zero rows (single-image cameras) stay zero.

    Returns:
        The normalised features, of the same type, dtype and device as ``feats``.

    Warns:
        UserWarning: a single camera (eq. 4 degenerates to a global standardisation), or a
        camera with a single image (its features all become the zero vector).
    """
    is_tensor = isinstance(feats, torch.Tensor)
    if is_tensor:
        x = feats.detach()
    else:
        arr = np.asarray(feats)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    n = x.shape[0]
    cams = _camids_array(camids, n)
    if n == 0:
        return feats

    out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    uniq, inverse = np.unique(cams, return_inverse=True)
    inverse_t = torch.from_numpy(inverse.astype(np.int64)).to(x.device)
    singles = []
    for c in range(len(uniq)):
        rows = (inverse_t == c).nonzero().squeeze(1)
        sub = x.index_select(0, rows).to(torch.float64)
        mu = sub.mean(dim=0, keepdim=True)
        centred = sub - mu
        sigma = centred.pow(2).mean(dim=0, keepdim=True).sqrt()  # population std (ddof 0)
        sigma = torch.where(sigma < eps, torch.ones_like(sigma), sigma)
        out.index_copy_(0, rows, centred / sigma)
        if len(rows) == 1:
            singles.append(uniq[c])

    if len(uniq) == 1:
        warnings.warn(
            f"camera normalisation: all {n} features come from a single camera "
            f"({uniq[0]!r}), so eq. 4 degenerates to a global standardisation (no camera "
            "shift is removed)",
            UserWarning,
            stacklevel=2,
        )
    if singles:
        warnings.warn(
            f"camera normalisation: camera(s) {singles} have a single image; its standard "
            "deviation is 0, so those features become the zero vector (they will all look "
            "alike to the clustering)",
            UserWarning,
            stacklevel=2,
        )
    if l2_after:
        norm = out.norm(dim=1, keepdim=True)
        out = out / torch.where(norm > 0, norm, torch.ones_like(norm))

    out = out.to(x.dtype if x.is_floating_point() else torch.float32)
    return out if is_tensor else out.numpy()
