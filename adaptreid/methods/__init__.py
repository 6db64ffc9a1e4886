"""The adaptation methods, one file each, on the interface of :mod:`adaptreid.engine.method`
(driven by the one loop of :mod:`adaptreid.engine.loop`, which no method imports). Importing
this package registers them: ``method: msplr``, ``method: past`` (with
its RTL batches in :mod:`.past_rtl`), ``method: cluster_contrast``. Their options are in
:mod:`adaptreid.method_options` (so a config builds without importing a method)."""

from . import cluster_contrast, msplr, past  # noqa: F401  (register the methods)
from .cluster_contrast import ClusterContrast, ClusterContrastOptions
from .msplr import MSPLR, MSPLROptions
from .past import PAST, PASTOptions

__all__ = [
    "MSPLR",
    "PAST",
    "ClusterContrast",
    "ClusterContrastOptions",
    "MSPLROptions",
    "PASTOptions",
]
