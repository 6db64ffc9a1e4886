"""A small name -> factory registry (the fast-reid pattern), with helpful errors."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``@REG.register("name")`` adds one; ``REG.get(name)`` finds it.

    Unknown names raise :class:`ConfigError` listing the known names and the closest match.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            for key in (name, *aliases):
                key = key.lower()
                if key in self._items:
                    raise KeyError(f"{self.kind} {key!r} is registered twice")
                self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._items:
            close = difflib.get_close_matches(key, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
            )
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


#: The adaptation methods by name (``method: <name>``), filled by
#: :func:`adaptreid.engine.method.register_method` when a method's module is imported
#: (``import adaptreid.methods`` registers the built-in ones).
METHODS: Registry[Any] = Registry("adaptation method")

#: Each method's options dataclass by method name. The built-in ones are registered by
#: :mod:`adaptreid.method_options`, which :mod:`adaptreid.config` imports, so that a config is
#: built and checked without importing any method.
METHOD_OPTIONS: Registry[Any] = Registry("adaptation method")
