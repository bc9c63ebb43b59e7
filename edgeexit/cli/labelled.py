"""Labelled data for the commands that measure accuracy on a package (calibrate, quantize):
a data set ``edgeexit.data`` loads, shaped for the package's input, or for a text encoder the
labelled tweets of ``edgeexit.data.tweets`` tokenized with the package's own tokenizer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from edgeexit.package import Package

#: ``--data`` names that mean the labelled tweets (text encoders)
TWEETS = ("tweets", "builtin:tweets")
#: Tweet splits as ``--split`` names them
_TWEET_SPLITS = ("train", "validation", "test")


def load_labelled(
    spec: str, split: str, limit: int | None, package: Package, max_length: int
) -> tuple[Any, np.ndarray, str]:
    """Model-ready inputs, labels and where they came from: a data set through ``prepare_dataset``,
    or the tweets tokenized by the package's tokenizer (a mapping of (N, L) arrays)."""
    if spec.strip().lower() in TWEETS:
        return _tweets(split, limit, package, max_length)
    from edgeexit.data import load_dataset
    from edgeexit.runtime.inputs import prepare_dataset

    data = load_dataset(spec, split=split)
    if limit:
        data = data.head(limit)
    x, y = prepare_dataset(data, package.manifest)
    return x, y, data.source


def _tweets(split: str, limit: int | None, package: Package, max_length: int) -> tuple[Any, np.ndarray, str]:
    from edgeexit.data.tweets import load_tweets
    from edgeexit.errors import DataError
    from edgeexit.runtime.text import TextEncoder

    if split not in _TWEET_SPLITS:
        raise DataError(f"the tweets have no split {split!r}; expected one of {', '.join(_TWEET_SPLITS)}")
    encoder = TextEncoder.from_package(package, max_length=max_length)  # an InputError for an image model
    texts = getattr(load_tweets(), split)
    if limit:
        texts = texts.take(limit)
    return encoder.encode(list(texts.texts)), texts.y, f"{texts.source} ({split}, {len(texts.y)} tweets)"
