"""adaptreid: unsupervised domain adaptation for person re-identification.

Data flows one way: ``data`` (datasets -> samples -> loaders) -> ``models`` -> features ->
``pseudo`` (pure functions: distances, clustering, selection) -> pseudo-labels -> ``methods``
(training recipes built on ``engine``) -> ``evaluation`` (pure functions on arrays).
"""

__version__ = "0.1.0"

_API = ("load", "search", "load_features", "Rerank")


def __getattr__(name: str):
    """``adaptreid.load`` / ``search`` / ``load_features`` / ``Rerank`` (:mod:`adaptreid.api`),
    imported on first use so that ``import adaptreid`` stays light (no torch)."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'adaptreid' has no attribute {name!r}")
