"""Labelled data for the commands that measure accuracy on a package (calibrate, quantize):
a data set ``edgeexit.data`` loads, shaped for the package's input, or for a text encoder a
labelled text set of ``edgeexit.data.text_sets`` (the tweets, the Rotten Tomatoes snippets)
tokenized with the package's own tokenizer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from edgeexit.package import Package


def load_labelled(
    spec: str, split: str, limit: int | None, package: Package, max_length: int
) -> tuple[Any, np.ndarray, str]:
    """Model-ready inputs, labels and where they came from: a data set through ``prepare_dataset``,
    or a text set tokenized by the package's tokenizer (a mapping of (N, L) arrays)."""
    from edgeexit.data.text_sets import text_set_name

    name = text_set_name(spec)
    if name is not None:
        return _texts(name, split, limit, package, max_length)
    from edgeexit.data import load_dataset
    from edgeexit.runtime.inputs import prepare_dataset

    data = load_dataset(spec, split=split)
    if limit:
        data = data.head(limit)
    x, y = prepare_dataset(data, package.manifest)
    return x, y, data.source


def _texts(name: str, split: str, limit: int | None, package: Package, max_length: int) -> tuple[Any, np.ndarray, str]:
    from edgeexit.data.text_sets import load_text_set
    from edgeexit.data.texts import SPLIT_NAMES
    from edgeexit.errors import DataError
    from edgeexit.runtime.text import TextEncoder

    if split not in SPLIT_NAMES:
        raise DataError(f"the text set {name} has no split {split!r}; expected one of {', '.join(SPLIT_NAMES)}")
    encoder = TextEncoder.from_package(package, max_length=max_length)  # an InputError for an image model
    texts = getattr(load_text_set(name), split)
    if limit:
        texts = texts.take(limit)
    return encoder.encode(list(texts.texts)), texts.y, f"{texts.source} ({split}, {len(texts.y)} texts)"
