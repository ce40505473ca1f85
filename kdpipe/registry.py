"""Name -> factory registries shared by models, methods, losses, export targets and runtimes.

Adding an entry is one decorator line; an unknown name is a `KdpipeError` that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdpipe.errors import KdpipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries with a decorator to fill it and a friendly lookup."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: `@MODELS.register()` uses the function's name, `register("x")` sets one."""

        def add(entry: T) -> T:
            key = name or entry.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry called `name`, or a `KdpipeError` naming the available ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise KdpipeError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
