"""Errors a user can act on. Each message names the file or field and what was expected."""


class AdaptReIDError(Exception):
    """Base class of every error adaptreid raises on purpose (the CLI prints these without a
    traceback)."""


class DatasetError(AdaptReIDError, ValueError):
    """A dataset root, file name, manifest or image is missing or malformed."""


class ConfigError(AdaptReIDError, ValueError):
    """A config file, key or value is invalid."""


class CheckpointError(AdaptReIDError, ValueError):
    """A checkpoint or weight file cannot be loaded (missing, corrupt, untrusted, mismatched)."""


class TrainingError(AdaptReIDError, RuntimeError):
    """Training cannot go on (non-finite loss or features, no pseudo-label cluster, ...)."""


class MissingDependencyError(AdaptReIDError, ImportError):
    """An optional dependency that a chosen setting needs is not installed (the message says
    how to install it, and which setting needs nothing else)."""
