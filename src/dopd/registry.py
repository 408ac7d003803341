"""A small name -> object registry for pluggable policies, presets and catalogs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dopd.errors import DopdError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps case-insensitive names to objects; unknown names raise :class:`DopdError`.

    ``kind`` names what is registered (``"policy"``, ``"GPU"`` ...) for error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @staticmethod
    def _key(name: str) -> str:
        return name.strip().lower()

    def register(self, name: str, item: T) -> T:
        key = self._key(name)
        if key in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[key] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """Use as ``@registry.decorator("name")`` on a class or function."""

        def wrap(item: T) -> T:
            return self.register(name, item)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[self._key(name)]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise DopdError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))

    def __len__(self) -> int:
        return len(self._items)
