"""``adaptreid embed`` and ``adaptreid search``: parse, build, call (like :mod:`adaptreid.cli`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ..errors import AdaptReIDError, DatasetError

__all__ = ["add_commands", "add_extraction_args"]

_FEATURE_SUFFIXES = (".npz", ".parquet")


def _embedder(args: argparse.Namespace, **kw):
    from .embed import Embedder

    return Embedder.from_checkpoint(
        args.checkpoint,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        **kw,
    )


def _report_skipped(dropped, where: str) -> None:
    if dropped:
        print(f"skipped {len(dropped)} unreadable image(s) in {where}:")
        for _, path, reason in dropped:
            print(f"  {path}: {reason}")


def _need_some(fs, dropped, where: str) -> None:
    if not len(fs):
        first = f" (first: {dropped[0][1]}: {dropped[0][2]})" if dropped else ""
        raise DatasetError(f"none of the images in {where} could be read{first}")


def _dataset_samples(args: argparse.Namespace):
    from ..data.datasets import SPLITS, open_dataset

    ds = open_dataset(args.dataset, args.root, allow_absolute_paths=args.allow_absolute_paths)
    if args.split != "all":
        ds.require(args.split, purpose="adaptreid embed")
        return ds.split(args.split), f"{ds.name} {args.split}"
    samples = [s for name in SPLITS for s in ds.split(name)]
    if not samples:
        raise DatasetError(f"dataset {ds.name!r} ({ds.root}) has no images")
    return samples, f"{ds.name} (train, query, gallery)"


def cmd_embed(args: argparse.Namespace) -> int:
    from .embed import folder_samples

    if bool(args.images) == bool(args.dataset):
        raise AdaptReIDError("give either --images DIR or --dataset NAME --root DIR")
    if args.dataset and not args.root:
        raise AdaptReIDError("--dataset needs --root DIR")
    if Path(args.out).suffix not in _FEATURE_SUFFIXES:
        raise AdaptReIDError(f"--out {args.out}: a features file ends in .npz or .parquet")
    if args.images:
        samples, where = folder_samples(args.images), str(args.images)
    else:
        samples, where = _dataset_samples(args)
    emb = _embedder(args, flip=args.flip)
    fs, dropped = emb.embed_samples(samples, verbose=not args.quiet)
    _report_skipped(dropped, where)
    _need_some(fs, dropped, where)
    fs.save(args.out)
    known = "cameras known" if (fs.camids >= 0).all() else "cameras unknown"
    labels = ", identities known" if fs.pids is not None else ""
    print(
        f"wrote {len(fs):,} features ({emb.feat_dim}-d, {known}{labels}) of {where} to "
        f"{args.out}; model {fs.fingerprint}"
    )
    return 0


def _query_samples(items: list[str]):
    from ..data.datasets import IMAGE_EXTENSIONS, MARKET_PATTERN, UNKNOWN_CAMERA, Sample
    from .embed import folder_samples

    samples = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            samples += folder_samples(p)
        elif p.is_file() or p.suffix.lower() in IMAGE_EXTENSIONS:
            samples.append(Sample(str(p), -1, UNKNOWN_CAMERA))
        else:
            raise DatasetError(f"query {item} is neither an image file nor a folder")
    parsed = [MARKET_PATTERN.match(os.path.basename(s.path)) for s in samples]
    if all(m and int(m.group(1)) >= 0 and int(m.group(2)) >= 1 for m in parsed):
        samples = [
            s._replace(pid=int(m.group(1)), camid=int(m.group(2)) - 1)
            for s, m in zip(samples, parsed)
        ]
    return samples


def cmd_search(args: argparse.Namespace) -> int:
    from ..webpage.search_page import write_search_page
    from .embed import folder_samples
    from .features import FeaturesFileError, load_features
    from .search import Rerank, search

    gallery_arg = Path(args.gallery)
    gallery = None
    if gallery_arg.suffix in _FEATURE_SUFFIXES and not gallery_arg.is_dir():
        gallery = load_features(gallery_arg)
    emb = _embedder(args, flip=bool(gallery.meta.get("flip")) if gallery else args.flip)
    if gallery is not None and gallery.fingerprint != emb.fingerprint:
        raise FeaturesFileError(
            f"{gallery_arg} holds features of another model (fingerprint {gallery.fingerprint}; "
            f"--checkpoint {args.checkpoint} is {emb.fingerprint}): their distances mean "
            f"nothing; run adaptreid embed --checkpoint {args.checkpoint} again"
        )
    if gallery is None:
        gallery, dropped = emb.embed_samples(
            folder_samples(gallery_arg), verbose=not args.quiet, desc="gallery"
        )
        _report_skipped(dropped, str(gallery_arg))
        _need_some(gallery, dropped, str(gallery_arg))
    query, dropped = emb.embed_samples(
        _query_samples(args.query), verbose=not args.quiet, desc="query"
    )
    _report_skipped(dropped, "the query")
    _need_some(query, dropped, "the query")
    same = np.array(
        [[os.path.realpath(q) == os.path.realpath(g) for g in gallery.paths] for q in query.paths]
    )
    metric = args.metric or emb.metric
    res = search(
        query.features,
        gallery.features,
        args.top,
        metric=metric,
        rerank=Rerank(args.k1, args.k2, args.lambda_value) if args.rerank else None,
        exclude=same,
    )
    labelled = query.pids is not None and gallery.pids is not None
    how = "k-reciprocal re-ranked" if args.rerank else f"{metric} distance"
    for i, qp in enumerate(query.paths):
        cam = int(query.camids[i])
        print(f"query {qp} (camera {cam + 1 if cam >= 0 else 'unknown'}): top {args.top}, {how}")
        for j, g in enumerate(res.indices[i]):
            if g < 0:
                continue
            mark = ""
            if labelled:
                mark = " same-id" if query.pids[i] == gallery.pids[g] else " other-id"
            gcam = int(gallery.camids[g])
            print(
                f"  {j + 1:3d}  d={res.distances[i, j]:.4f}  cam {gcam + 1 if gcam >= 0 else '?'}"
                f"{mark}  {gallery.paths[g]}"
            )
    if args.html:
        page = write_search_page(
            args.html,
            query,
            gallery,
            res.indices,
            res.distances,
            note=f"{len(gallery):,} gallery images, {how}, model {emb.fingerprint}",
        )
        print(f"page: {page}")
    return 0


def add_extraction_args(p: argparse.ArgumentParser) -> None:
    """``--amp``, ``--channels-last / --no-channels-last`` and ``--num-workers`` of every
    command that extracts features (evaluate, cluster, embed, search), with the defaults of
    a run's extraction: ``amp: auto`` (bf16 + channels_last where a probe finds it faster on
    this machine, fp32 elsewhere; cached per machine and model) and 2 loader workers. Before,
    these commands ran fp32 in the main process unless told: 88 s against 14 s for an
    evaluation on the DukeMTMC-reID dev half (issue 27)."""
    p.add_argument("--num-workers", type=int, default=2, help="loader processes (default 2)")
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "none", "bf16", "fp16"],
        help="extraction precision (default auto: bf16 + channels_last where a probe measures "
        "it faster on this machine, as train.amp: auto; none: fp32)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force the channels_last layout on or off (default: the probe's choice with "
        "--amp auto, off otherwise)",
    )


def _extraction_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint of adaptreid train/adapt")
    p.add_argument("--flip", action="store_true", help="average with the mirrored image")
    p.add_argument("--batch-size", type=int, default=64)
    add_extraction_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_commands(sub) -> None:
    """Register ``embed`` and ``search`` on the ``adaptreid`` sub-parsers ``sub``."""
    em = sub.add_parser(
        "embed",
        help="features of a dataset or an image folder, to a .npz (or .parquet) file",
        description="Features of every image with its path, camera id (-1 unknown), identity "
        "when known and the model's fingerprint. Unreadable images are skipped and listed.",
    )
    _extraction_args(em)
    src = em.add_argument_group("images (one of)")
    src.add_argument("--images", help="a folder of images (searched recursively)")
    src.add_argument("--dataset", help="a registered dataset name (with --root)")
    em.add_argument("--root", help="with --dataset: its folder")
    em.add_argument("--split", default="all", choices=["all", "train", "query", "gallery"])
    em.add_argument("--allow-absolute-paths", action="store_true")
    em.add_argument("--out", required=True, help="features file: FILE.npz (or FILE.parquet)")
    em.set_defaults(func=cmd_embed)

    se = sub.add_parser(
        "search",
        help="ranked gallery matches of query images, on the terminal and as an HTML page",
    )
    _extraction_args(se)
    se.add_argument("--query", nargs="+", required=True, help="query images (or folders)")
    se.add_argument(
        "--gallery", required=True, help="a folder of images, or a features file of embed"
    )
    se.add_argument("--top", type=int, default=20)
    se.add_argument("--metric", choices=["euclidean", "cosine"], help="default: the model's")
    se.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    se.add_argument("--k1", type=int, default=20)
    se.add_argument("--k2", type=int, default=6)
    se.add_argument("--lambda-value", type=float, default=0.3)
    se.add_argument(
        "--html", default="search.html", help="the results page (default search.html; '' none)"
    )
    se.set_defaults(func=cmd_search)
