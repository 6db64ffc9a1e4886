"""adaptreid: unsupervised domain adaptation for person re-identification.

Data flows one way: ``data`` (datasets -> samples -> loaders) -> ``models`` -> features ->
``pseudo`` (pure functions: distances, clustering, selection) -> pseudo-labels -> ``methods``
(training recipes built on ``engine``) -> ``evaluation`` (pure functions on arrays).
"""

__version__ = "0.1.0"
