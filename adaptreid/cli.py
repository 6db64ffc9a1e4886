"""The ``adaptreid`` command. Thin: parse the arguments, build the parts, call them.

Nothing this module imports at its top imports torch, so ``--help`` and argument errors come
back at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from . import __version__
from .errors import AdaptReIDError

log = logging.getLogger("adaptreid")


# ----------------------------------------------------------------------------- data


def cmd_data_info(args: argparse.Namespace) -> int:
    from .data.datasets import open_dataset

    ds = open_dataset(args.dataset, args.root, allow_absolute_paths=args.allow_absolute_paths)
    print(ds.format_summary())
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_dataset
    from .data.datasets import open_dataset

    ds = open_dataset(args.dataset, args.root, allow_absolute_paths=args.allow_absolute_paths)
    report = check_dataset(ds, workers=args.workers or None, progress=not args.quiet)
    print(report.format())
    return 0 if report.ok else 1


def cmd_data_list(args: argparse.Namespace) -> int:
    from .data.datasets import DATASETS

    print("\n".join(DATASETS.names()))
    return 0


# ----------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.datasets import open_dataset
    from .engine.builders import per_query_record
    from .engine.evaluator import evaluate_model
    from .evaluation import map_interval
    from .models import build_model
    from .report.compare import compare_text, load_per_query
    from .rundir.model_io import model_from_checkpoint
    from .runtime.device import resolve_device
    from .runtime.precision import resolve_precision

    if bool(args.checkpoint) == bool(args.backbone):
        raise AdaptReIDError("give either --checkpoint PATH or --backbone NAME [--weights PATH]")
    compare = load_per_query(Path(args.compare)) if args.compare else None
    device = resolve_device(args.device)
    t_start = time.perf_counter()
    dataset = open_dataset(args.dataset, args.root, allow_absolute_paths=args.allow_absolute_paths)
    dataset.require("query", "gallery", purpose="evaluation")  # before a precision probe
    height, width = args.height, args.width
    if args.checkpoint:
        model, info = model_from_checkpoint(args.checkpoint)
        height = height or info.get("height", 256)
        width = width or info.get("width", 128)
        source = f"checkpoint {args.checkpoint}"
    else:
        model = build_model(args.backbone, last_stride=args.last_stride, pretrained=args.weights)
        source = f"{args.backbone} ({args.weights or 'random init'})"
    height, width = height or 256, width or 128
    model.to(device)
    amp, channels_last, reason = resolve_precision(
        args.amp, model, (height, width), device, channels_last=args.channels_last, mode="extract"
    )
    log.info("extraction precision: %s", reason)
    out = evaluate_model(
        model,
        dataset,
        height=height,
        width=width,
        device=device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        metric=args.metric,
        flip=args.flip,
        rerank=args.rerank,
        k1=args.k1,
        k2=args.k2,
        lambda_value=args.lambda_value,
        amp=amp,
        channels_last=channels_last,
        verbose=not args.quiet,
    )
    wall = time.perf_counter() - t_start
    title = f"{dataset.name}: {len(dataset.query)} query x {len(dataset.gallery)} gallery, {source}"
    if args.rerank:
        title += (
            f", k-reciprocal re-ranking (k1={args.k1}, k2={args.k2}, lambda={args.lambda_value})"
        )
    print(title)
    print(out.result.format_table())
    m = map_interval(out.result.ap, out.query.pids)
    print(
        f"mAP {100 * m.value:.2f}%, 90% interval [{100 * m.low:.2f}, {100 * m.high:.2f}] "
        f"when the {m.num_identities} query identities are resampled"
    )
    if compare is not None:
        print(compare_text(out.result.ap, out.query.pids, compare))
    print(f"wall time {wall:.1f} s (extract {out.seconds['extract']:.1f} s)")
    if args.out:
        outdir = Path(args.out)
        outdir.mkdir(parents=True, exist_ok=True)
        record = {
            "dataset": dataset.name,
            "root": str(args.root),
            "model": source,
            "rerank": args.rerank,
            "metric": args.metric,
            "flip": args.flip,
            "amp": amp,
            "channels_last": channels_last,
            **out.metrics(),
            "mAP_interval_90": [round(m.low, 6), round(m.high, 6)],
            "wall_time_s": round(wall, 2),
            "per_query": per_query_record(out.result.ap, out.query.pids),
        }
        (outdir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"metrics written to {outdir / 'metrics.json'}")
    return 0


# ----------------------------------------------------------------------------- train


def import_whole_package() -> list[str]:
    """Import every adaptreid module now; the names of those that could not be (an optional
    dependency missing: such a module is then not used).

    ``train``, ``adapt`` and ``demo`` call it first, so that a run keeps the code it started
    with. The package imports many modules only where they are used (the report at the end of
    a run, a method's pseudo-label step); a checkout changed while a run goes on (``git
    pull``, an edit) would otherwise hand the run newer modules next to the older ones it has
    already loaded. A source training ended so on 2026-12-07 after 62 minutes: its closing
    report imported a name that the loaded ``adaptreid.evaluation`` did not have yet."""
    import importlib
    import pkgutil

    import adaptreid

    missing = []
    for m in pkgutil.walk_packages(adaptreid.__path__, "adaptreid."):
        if m.name.endswith(".__main__"):
            continue
        try:
            importlib.import_module(m.name)
        except ImportError:
            missing.append(m.name)
    return missing


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.supervised import train_source

    import_whole_package()
    cfg = load_config(args.config, args.overrides, command="train")
    run = train_source(cfg, resume=args.resume, verbose=not args.quiet)
    print(f"run folder: {run.path}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from . import methods  # noqa: F401  (registers the built-in methods)
    from .config import load_config
    from .engine.loop import adapt

    import_whole_package()
    cfg = load_config(args.config, args.overrides, command="adapt")
    run = adapt(cfg, resume=args.resume, verbose=not args.quiet)
    print(f"run folder: {run.path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_demo_table, run_demo

    import_whole_package()
    out = args.out or ("runs/demo" if args.data is None else "runs/demo-real")
    result = run_demo(
        out,
        data=args.data,
        weights=args.weights,
        overrides=args.overrides,
        verbose=not args.quiet,
    )
    print()
    print(format_demo_table(result))
    print(f"\nreports: {result.source_run / 'report.md'}, {result.adapt_run / 'report.md'}")
    print(f"table:   {Path(out) / 'demo.md'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export.onnx import export_checkpoint

    report = export_checkpoint(
        args.checkpoint,
        args.format,
        args.out,
        opset=args.opset,
        check=not args.no_check,
        atol=args.atol,
    )
    print(report.summary())
    print(f"metadata (input size, normalisation, metric): {report.path}.json")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    import numpy as np

    from .config import load_config
    from .data.datasets import ground_truth, open_dataset
    from .data.loaders import build_test_loader
    from .data.transforms import build_transforms
    from .engine.extract import extract_features
    from .engine.pseudo_step import StepFeatures
    from .report.sweep import format_sweep
    from .rundir.model_io import model_from_checkpoint
    from .runtime.device import resolve_device
    from .runtime.precision import Precision, resolve_precision

    cfg = load_config(args.config, args.overrides)
    device = resolve_device(args.device)
    dataset = open_dataset(args.dataset, args.root, allow_absolute_paths=args.allow_absolute_paths)
    feats = _cached_features(args.features, args.checkpoint, dataset)
    if feats is None:
        model, info = model_from_checkpoint(args.checkpoint)
        height = info.get("height", cfg.data.height)
        width = info.get("width", cfg.data.width)
        model.to(device)
        amp, channels_last, reason = resolve_precision(
            args.amp,
            model,
            (height, width),
            device,
            channels_last=args.channels_last,
            mode="extract",
        )
        log.info("extraction precision: %s", reason)
        tf = build_transforms(height, width, train=False)
        loader = build_test_loader(dataset.train, tf, args.batch_size, args.num_workers)
        feats = extract_features(
            model,
            loader,
            device=device,
            normalize=False,
            precision=Precision(amp, channels_last),
            verbose=not args.quiet,
        )
        if args.features:
            _save_features(args.features, args.checkpoint, dataset, feats)
    gt = ground_truth(dataset.train)
    if cfg.pseudo.method != "dbscan":
        raise AdaptReIDError(
            f"adaptreid cluster sweeps DBSCAN's eps; pseudo.method is {cfg.pseudo.method!r}"
        )
    # the loop's step object: the same settings, prepared rows and Jaccard distance
    sf = StepFeatures(feats, cfg.pseudo, seed=cfg.seed, true_pids=gt)
    if args.eps_sweep == "auto":  # the candidates pseudo.auto_eps would try
        eps_values = None
    elif args.eps_sweep:
        try:
            a, b, step = (float(v) for v in args.eps_sweep.split(":"))
        except ValueError:
            raise AdaptReIDError(
                f"--eps-sweep {args.eps_sweep!r}: expected start:stop:step, e.g. 0.3:0.7:0.05"
            ) from None
        eps_values = [round(v, 6) for v in np.arange(a, b + step / 2, step)]
    else:
        eps_values = [cfg.pseudo.eps]
    rows, eps, reason = sf.eps_sweep(eps_values)
    print(
        f"{dataset.name} train: {len(dataset.train)} images; DBSCAN on "
        f"{sf.settings.distance} distance, camera normalisation "
        f"{'on' if sf.settings.camera_norm else 'off'}"
    )
    print(format_sweep(rows))
    print(f"recommended eps: {eps}  ({reason})")
    if gt is not None:
        print("(precision / recall / F1 / NMI use the dataset's identities: analysis only)")
    if args.out:
        import json

        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "eps_sweep.json").write_text(
            json.dumps(
                {"rows": rows, "recommended": eps, "reason": reason}, indent=2, default=float
            )
        )
    return 0


def _cached_features(path, checkpoint, dataset):
    """Features saved by an earlier ``cluster --features PATH`` of the same checkpoint and
    dataset (else None)."""
    if not path or not Path(path).is_file():
        return None
    import torch

    from .engine.extract import Features

    saved = torch.load(path, weights_only=True)
    same = (
        saved.get("checkpoint") == str(Path(checkpoint).resolve())
        and saved.get("dataset") == dataset.name
        and int(saved["feats"].shape[0]) == len(dataset.train)
    )
    if not same:
        log.info("%s holds features of another checkpoint or dataset: extracting again", path)
        return None
    log.info("features of %s read from %s", checkpoint, path)
    return Features(saved["feats"], saved["pids"].numpy(), saved["camids"].numpy())


def _save_features(path, checkpoint, dataset, feats) -> None:
    import torch

    from .rundir.checkpoint import save_checkpoint

    save_checkpoint(
        {
            "checkpoint": str(Path(checkpoint).resolve()),
            "dataset": dataset.name,
            "feats": feats.feats,
            "pids": torch.as_tensor(feats.pids),
            "camids": torch.as_tensor(feats.camids),
        },
        path,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from .report.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise AdaptReIDError(f"{run_dir} is not a run folder (no metrics.jsonl in it)")
    print(f"report written to {write_report(run_dir)}")
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML preset (path, or name under configs/)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir/name from its last checkpoint (with its saved "
        "config; a larger adapt.max_steps given alone extends an adaptation run)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=5")


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from .retrieval.commands import add_commands, add_extraction_args

    p = argparse.ArgumentParser(
        prog="adaptreid",
        description="Unsupervised domain adaptation for person re-identification.",
    )
    p.add_argument("--version", action="version", version=f"adaptreid {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", help="inspect datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    info = dsub.add_parser("info", help="images / identities / cameras per split")
    info.add_argument("--dataset", required=True, help="registered name (adaptreid data list)")
    info.add_argument("--root", required=True, help="dataset folder")
    info.add_argument(
        "--allow-absolute-paths",
        action="store_true",
        help="CSV manifests: allow paths outside the manifest's folder",
    )
    info.set_defaults(func=cmd_data_info)
    chk = dsub.add_parser(
        "check",
        help="decode every image of every split (in parallel); list the bad ones, exit 1 if any",
    )
    chk.add_argument("--dataset", required=True, help="registered name (adaptreid data list)")
    chk.add_argument("--root", required=True, help="dataset folder")
    chk.add_argument(
        "--workers", type=int, default=0, help="reading processes (default: one per CPU core)"
    )
    chk.add_argument(
        "--allow-absolute-paths",
        action="store_true",
        help="CSV manifests: allow paths outside the manifest's folder",
    )
    chk.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    chk.set_defaults(func=cmd_data_check)
    lst = dsub.add_parser("list", help="registered dataset names")
    lst.set_defaults(func=cmd_data_list)
    data.set_defaults(func=lambda a: (data.print_help(), 0)[1])
    for p_data in (info, chk, lst, data):  # file reading, no torch: no share of the threads
        p_data.set_defaults(shares_cores=False)

    ev = sub.add_parser("evaluate", help="CMC / mAP / mINP of a model on a query/gallery split")
    ev.add_argument("--dataset", required=True)
    ev.add_argument("--root", required=True)
    src = ev.add_argument_group("model (one of)")
    src.add_argument("--checkpoint", help="a checkpoint written by adaptreid train/adapt")
    src.add_argument("--backbone", help="a backbone name, e.g. mobilenet_v2, resnet50_ibn_a")
    ev.add_argument(
        "--weights", help="with --backbone: local weight file (ImageNet, torchvision keys)"
    )
    ev.add_argument("--last-stride", type=int, default=1)
    ev.add_argument(
        "--height", type=int, default=0, help="input height (default: checkpoint's or 256)"
    )
    ev.add_argument(
        "--width", type=int, default=0, help="input width (default: checkpoint's or 128)"
    )
    ev.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
    ev.add_argument("--flip", action="store_true", help="average features with the mirrored image")
    ev.add_argument(
        "--rerank", action="store_true", help="k-reciprocal re-ranking (Zhong et al. 2017)"
    )
    ev.add_argument("--k1", type=int, default=20)
    ev.add_argument("--k2", type=int, default=6)
    ev.add_argument("--lambda-value", type=float, default=0.3)
    ev.add_argument("--batch-size", type=int, default=128)
    add_extraction_args(ev)
    ev.add_argument("--device", default="auto")
    ev.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: $ADAPTREID_THREADS, else a fair share of the cores "
        "among the adaptreid processes on this machine)",
    )
    ev.add_argument(
        "--out", help="folder to write metrics.json into (with each query's AP, for --compare)"
    )
    ev.add_argument(
        "--compare",
        metavar="DIR",
        help="an earlier --out folder of another model on the same split: print this model's "
        "mAP minus that one's, with a 90%% interval from resampling the test identities",
    )
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ev.add_argument(
        "--allow-absolute-paths",
        action="store_true",
        help="CSV manifests: allow paths outside the manifest's folder",
    )
    ev.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("train", help="supervised training on the labelled source dataset")
    _add_run_args(tr)
    tr.set_defaults(func=cmd_train)

    ad = sub.add_parser(
        "adapt",
        help="unsupervised adaptation to the target (method: msplr | past | cluster_contrast)",
    )
    _add_run_args(ad)
    ad.set_defaults(func=cmd_adapt)

    dm = sub.add_parser(
        "demo",
        help="source training -> direct transfer -> MSPLR -> table, on built-in synthetic data",
        description="The main job end to end. Without --data: a built-in two-domain synthetic "
        "dataset (drawn on first use, no download), a few minutes on a laptop CPU. With --data "
        "DIR (holding market1501/ and dukemtmc/, e.g. ../shared/data): the CPU presets "
        "Market-1501 -> DukeMTMC-reID. Run it again to continue a killed demo.",
    )
    dm.add_argument("--data", help="folder with market1501/ and dukemtmc/ (real data)")
    dm.add_argument(
        "--weights", help="with --data: ImageNet MobileNetV2 weights (default DIR/../weights/...)"
    )
    dm.add_argument("--out", help="output folder (default runs/demo, or runs/demo-real)")
    dm.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    dm.add_argument("overrides", nargs="*", metavar="key=value", help="applied to both runs")
    dm.set_defaults(func=cmd_demo)

    cl = sub.add_parser(
        "cluster", help="pseudo-labels of a dataset without training; sweep eps and recommend one"
    )
    cl.add_argument("--checkpoint", required=True)
    cl.add_argument("--dataset", required=True)
    cl.add_argument("--root", required=True)
    cl.add_argument(
        "--eps-sweep",
        help="start:stop:step, e.g. 0.3:0.7:0.05, or 'auto' for the candidates that "
        "pseudo.auto_eps tries (quantiles of the distance to the min_samples-th neighbour)",
    )
    cl.add_argument(
        "--features",
        metavar="FILE",
        help="cache the extracted features in FILE and reuse them on the next call with the "
        "same checkpoint and dataset (fast repeated sweeps)",
    )
    cl.add_argument("--config", help="preset whose pseudo.* settings to use")
    cl.add_argument("--batch-size", type=int, default=128)
    add_extraction_args(cl)
    cl.add_argument("--device", default="auto")
    cl.add_argument("--out", help="folder to write eps_sweep.json into")
    cl.add_argument("-q", "--quiet", action="store_true")
    cl.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. pseudo.camera_norm=false"
    )
    cl.add_argument(
        "--allow-absolute-paths",
        action="store_true",
        help="CSV manifests: allow paths outside the manifest's folder",
    )
    cl.set_defaults(func=cmd_cluster)

    ex = sub.add_parser(
        "export",
        help="write a checkpoint's model as ONNX or TorchScript, checked against PyTorch",
    )
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    ex.add_argument("--out", help="output file (default: beside the checkpoint)")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset")
    ex.add_argument(
        "--atol", type=float, default=1e-4, help="largest allowed |exported - PyTorch| feature"
    )
    ex.add_argument(
        "--no-check", action="store_true", help="skip running the exported file (no onnxruntime)"
    )
    ex.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="(re)write report.md and plots of a run folder")
    rp.add_argument("run_dir")
    rp.set_defaults(func=cmd_report, shares_cores=False)

    add_commands(sub)  # embed, search
    return p


def _thread_share(args: argparse.Namespace):
    """A command that computes with torch runs its share of the machine's cores among the
    adaptreid processes there (:func:`adaptreid.runtime.threads.claim`); ``data`` and
    ``report`` only read files and take none."""
    if not getattr(args, "shares_cores", True):
        return contextlib.nullcontext()
    from .runtime.threads import claim

    return claim(getattr(args, "threads", 0) or None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        with _thread_share(args):
            return int(args.func(args) or 0)
    except AdaptReIDError as e:
        print(f"adaptreid: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adaptreid: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
