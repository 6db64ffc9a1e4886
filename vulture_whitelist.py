"""Names vulture (``make lint``, tests/test_dead_code.py) reports as unused that are used by
something it cannot see: a framework calling them, a registry decorator, ``getattr``, the tests
and benchmarks (vulture scans ``adaptreid/`` alone). Each line says which."""

# ruff: noqa: B018, F821

# torch.nn.Module calls forward through __call__ and extra_repr through repr()
_.forward
_.extra_repr
# torch's LRScheduler API (adaptreid.engine.optim.WarmupMultiStepLR)
_._get_closed_form_lr
# DataLoader's worker_init_fn signature (adaptreid.data.loaders.seed_worker)
worker_id
# scipy.sparse's flag, set after sorting the indices in place (pseudo.kreciprocal, dbscan)
_.has_sorted_indices
# function metadata set on the synthetic datasets' factories (adaptreid.data.synthetic)
_.__qualname__
_.__doc__
# registered dataset factories, called by name through adaptreid.data.datasets.DATASETS
market1501
dukemtmc
cuhk03
msmt17
manifest
pku_reid
synthetic_source
synthetic_target
# config keys read as getattr(cfg.data, f"{role}_root") / f"{role}_options"
_.source_root
_.target_root
_.source_options
_.target_options
# public API used by the tests and benchmarks (PCB part slices, k-means iterations,
# PseudoLabels.num_clusters, torch.distributed teardown of the DDP workers)
_.part_slice
_.n_iter
_.num_clusters
cleanup
# a module-level __getattr__ (PEP 562), called by Python for adaptreid.load / search / ...
__getattr__
# the Python API's Embedder.embed (adaptreid.load(...).embed(images)), used by users, the
# README's example (tests/test_readme.py) and tests/test_use.py
_.embed
# ImageCache's per-process counters of decoded images, read by tests/test_image_cache.py and
# benchmarks/image_cache.py
_.misses
# report.gap_text: a rule's gap to the oracle with its interval, for the tables of
# benchmarks/uda_tables.py and benchmarks/selection_runs.py (and tests/test_bootstrap.py)
gap_text
