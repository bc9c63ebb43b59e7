"""Files are written atomically: a reader (or a crash) never sees half a manifest or package."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    """The process umask: os.umask only sets, so read it by setting and restoring (files staged
    in a private temp dir then get the mode a plain ``open`` would have given them)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary stream to a temporary file beside ``path``, fsynced and renamed over it only when
    the block succeeds (removed when it raises), so a reader never sees a partial file.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600, so a
    daemon or container running as another user can read the package.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_output``)."""
    with atomic_output(path) as stream:
        stream.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def staged_directory(target: str | os.PathLike[str], *, overwrite: bool) -> Iterator[Path]:
    """Build a directory beside ``target`` and move it into place only when the block succeeds.

    A failed export therefore leaves no half-written package behind, and an existing package is
    replaced only by a complete one.
    """
    final = Path(target)
    if final.exists() and not overwrite:
        raise FileExistsError(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        stage.chmod(0o777 & ~current_umask())
        yield stage
        if final.exists():
            retired = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, retired)
            try:
                os.replace(stage, final)
            except BaseException:
                os.replace(retired, final)  # put the old package back rather than strand it
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
