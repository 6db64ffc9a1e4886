"""Camera-aware proxy contrastive losses (CAP: Wang et al., "Camera-aware Proxies for
Unsupervised Person Re-Identification", AAAI 2021), on a proxy memory.

A proxy is the part of a cluster seen by one camera (:func:`adaptreid.pseudo.centroids.
camera_proxies`); the memory ``B`` holds one L2-normalised vector per proxy. For an image
``x_i`` of camera ``c_i`` with L2-normalised feature ``f_i``, proxy ``j_i`` and cluster ``y_i``,
with ``s_ik = B[k]^T f_i / tau``:

* intra-camera loss: a softmax over the proxies of the image's own camera only, so images are
  pulled to their proxy and pushed from the other identities *of the same camera* (no camera
  style to separate them by)::

      L_intra = sum_c (1 / N_c) sum_{i: c_i = c} -log( exp(s_ij_i) / sum_{k: cam(k) = c} exp(s_ik) )

  (``N_c`` the images of camera ``c`` in the batch);

* inter-camera loss: every proxy of the image's cluster, whatever its camera, is a positive
  ``P_i``; the ``K`` proxies of other clusters most similar to ``f_i`` are the hard negatives
  ``Q_i``::

      L_inter = (1 / n) sum_i -(1 / |P_i|) sum_{p in P_i}
                log( exp(s_ip) / (sum_{u in P_i} exp(s_iu) + sum_{q in Q_i} exp(s_iq)) )

* ``L = L_intra + lambda L_inter`` (CAP: lambda 0.5, tau 0.07, K 50, memory momentum 0.2).

The memory itself (its momentum update) is :class:`adaptreid.losses.memory.
CameraProxyMemoryLoss`; its initial entries, the proxies' normalised mean features, come from
:func:`adaptreid.pseudo.centroids.initial_memory`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["camera_proxy_losses"]


def camera_proxy_losses(
    logits: torch.Tensor,
    proxy: torch.Tensor,
    proxy_cluster: torch.Tensor,
    proxy_camera: torch.Tensor,
    *,
    hard_negatives: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_intra, L_inter)`` of a batch (see the module docstring).

    Args:
        logits: ``(n, P)`` similarities to every proxy divided by the temperature,
            ``B^T f_i / tau``.
        proxy: ``(n,)`` each image's proxy (``>= 0``).
        proxy_cluster: ``(P,)`` each proxy's cluster.
        proxy_camera: ``(P,)`` each proxy's camera.
        hard_negatives: ``K``, the negatives of other clusters kept per image (all of them
            when there are fewer).
    """
    n, num_proxies = logits.shape
    if proxy.shape != (n,) or proxy_cluster.shape != (num_proxies,):
        raise ValueError(
            f"camera_proxy_losses: {tuple(logits.shape)} logits, {tuple(proxy.shape)} proxies, "
            f"{tuple(proxy_cluster.shape)} proxy clusters"
        )
    cam = proxy_camera[proxy]  # (n,) each image's camera
    same_cam = proxy_camera.unsqueeze(0) == cam.unsqueeze(1)  # (n, P)
    intra_logits = logits.masked_fill(~same_cam, float("-inf"))
    intra = F.cross_entropy(intra_logits, proxy, reduction="none")  # (n,)
    l_intra = logits.new_zeros(())
    for c in torch.unique(cam):
        l_intra = l_intra + intra[cam == c].mean()

    positive = proxy_cluster.unsqueeze(0) == proxy_cluster[proxy].unsqueeze(1)  # (n, P)
    neg_logits = logits.masked_fill(positive, float("-inf"))
    k = min(int(hard_negatives), num_proxies)
    hard = torch.zeros_like(positive)
    if k > 0:
        top = neg_logits.topk(k, dim=1).indices
        hard.scatter_(1, top, True)
        hard &= ~positive  # rows with fewer than k negatives picked -inf entries: drop them
    denom = torch.logsumexp(logits.masked_fill(~(positive | hard), float("-inf")), dim=1)
    log_p = (logits - denom.unsqueeze(1)).masked_fill(~positive, 0.0)
    l_inter = (-(log_p.sum(1) / positive.sum(1))).mean()
    return l_intra, l_inter
