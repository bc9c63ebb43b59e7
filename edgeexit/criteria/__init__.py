"""Exit criteria (numpy), one module each, picked by the name the manifest records."""

from __future__ import annotations

from edgeexit.criteria import confidence, learned, patience, similarity  # noqa: F401  (they register themselves)
from edgeexit.criteria.base import CRITERIA, Boundary, Criterion, softmax


def create_criterion(name: str) -> Criterion:
    return CRITERIA.get(name)()


def list_criteria(pattern: str = "*") -> list[str]:
    return CRITERIA.names(pattern)


__all__ = ["CRITERIA", "Boundary", "Criterion", "create_criterion", "list_criteria", "softmax"]
