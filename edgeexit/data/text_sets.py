"""Labelled text sets by name, for ``--data`` (calibrate, quantize) and the benchmarks.

A text set is a loader returning ``TextSplits`` (train / validation / test plus a report). The
names are what a user types; ``builtin:<name>`` is accepted too, as for the image sets.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeexit.data.rotten_tomatoes import load_rotten_tomatoes
from edgeexit.data.texts import TextSplits
from edgeexit.data.tweets import load_tweets
from edgeexit.registry import Registry

__all__ = ["TEXT_SETS", "list_text_sets", "load_text_set", "text_set_name"]

TEXT_SETS: Registry[Callable[[], TextSplits]] = Registry("text data set")
TEXT_SETS.register("tweets")(load_tweets)
TEXT_SETS.register("rotten-tomatoes")(load_rotten_tomatoes)

_PREFIX = "builtin:"


def list_text_sets() -> list[str]:
    return TEXT_SETS.names()


def text_set_name(spec: str) -> str | None:
    """The registered name ``spec`` means (case, spaces and a ``builtin:`` prefix aside), or None."""
    name = spec.strip().lower()
    name = name[len(_PREFIX) :] if name.startswith(_PREFIX) else name
    return name if name in TEXT_SETS else None


def load_text_set(name: str) -> TextSplits:
    """The splits of the text set ``name`` with its loader's defaults; UnknownNameError lists the names."""
    return TEXT_SETS.get(text_set_name(name) or name)()
