"""Named entry points, the way timm registers models.

Adapters, heads, criteria and zoo models each get one ``Registry``; a plug-in registers with a
decorator and users pick it by name (``list_heads()``, ``create_head("linear", ...)``). A wrong
name is an error that lists what exists, so a typo never turns into a silent default.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from edgeexit.errors import UnknownNameError, UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping of names to entry points of one kind (``kind`` only shapes error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(entry: T) -> T:
            if name in self._entries:
                raise UsageError(f"{self.kind} {name!r} is registered twice; pick another name")
            self._entries[name] = entry
            return entry

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; expected one of: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
