"""The adaptation methods, one file each, on the interface of :mod:`adaptreid.engine.method`
and the one loop of :mod:`adaptreid.engine.loop`. Importing this package registers them:
``method: msplr`` (seed 000), ``method: past`` (seed 003), ``method: cluster_contrast``."""

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
