"""Recipes: source training and the adaptation methods, each a short function over shared
parts. ``ADAPT_METHODS`` maps ``cfg.method`` to the recipe ``(cfg, *, resume, verbose)``."""

from ..registry import Registry

ADAPT_METHODS = Registry("adaptation method")


@ADAPT_METHODS.register("msplr")
def _msplr(cfg, *, resume=False, verbose=True):
    from .msplr import adapt_msplr

    return adapt_msplr(cfg, resume=resume, verbose=verbose)


@ADAPT_METHODS.register("past")
def _past(cfg, *, resume=False, verbose=True):
    from .past import adapt_past

    return adapt_past(cfg, resume=resume, verbose=verbose)
