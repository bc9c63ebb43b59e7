"""Split inference on the device: run segments 0..k here, send boundary k's tensor to a tail server.

The one promise: no request is lost. A sample that has not exited by boundary k is encoded and
sent; if anything goes wrong (the server is down, hangs past the deadline, refuses the request,
or answers something that does not decode) the engine finishes it here from the same boundary,
whose tensor is still in memory, and the Result says so (``offload.fallback`` with the reason).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from edgeexit.codecs import Codec, create_codec
from edgeexit.device.tails import select_tail
from edgeexit.errors import OffloadError, OffloadShed, PackageError
from edgeexit.manifest import TailSpec
from edgeexit.repository import CONFIG_FILE, DEFAULT_MAX_BATCH, read_config
from edgeexit.runtime.engine import Engine, OffloadInfo, Pending, Result
from edgeexit.transport.client import TailClient

log = logging.getLogger("edgeexit.device")


class OffloadRunner:
    """An Engine that offloads at boundary ``split`` through a TailClient.

    ``codec``: how the hidden tensor travels (fp32, fp16, int8; None: fp16 when the package has
    that tail, else fp32, else int8). ``early_exit=False`` sends every sample from the boundary
    (the split-at-k baseline) and a fallback then runs to full depth too, so an answer never
    depends on whether the server was up. ``max_batch``: samples per request in ``run_batch``
    (None: the tail's ``max_batch_size`` from its config.pbtxt, else 64).

    One runner per thread, like its Engine (whose bound buffers are reused); the TailClient and
    its breakers may be shared by every thread's runner.
    """

    def __init__(
        self,
        engine: Engine,
        client: TailClient,
        *,
        split: int,
        codec: str | None = None,
        early_exit: bool = True,
        max_batch: int | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.tail = select_tail(engine.manifest, split, codec)
        self.split = split
        self.codec = create_codec(self.tail.codec)
        self.early_exit = early_exit
        if max_batch is not None and max_batch < 1:
            raise OffloadError(f"max_batch is {max_batch}; expected at least 1 sample per request")
        self.max_batch = max_batch or _configured_max_batch(engine, self.tail.model) or DEFAULT_MAX_BATCH
        self._classes = engine.manifest.num_classes or None

    def run(self, x: np.ndarray, *, keep_hidden: bool = False) -> Result:
        """One sample: a local exit at or before the split, else the tail's answer (or a fallback)."""
        state = self.engine.run_until(x, self.split, early_exit=self.early_exit, keep_hidden=keep_hidden)
        if isinstance(state, Result):
            return state
        return self._finish(state)[0]

    def run_batch(self, xs: np.ndarray, *, keep_hidden: bool = False) -> list[Result]:
        """A batch: early exits retire here, the survivors travel together (``max_batch`` per
        request); Results in input order."""
        progress = self.engine.run_batch_until(xs, self.split, early_exit=self.early_exit, keep_hidden=keep_hidden)
        pending = progress.pending
        if pending is None:
            return list(progress.results)  # type: ignore[arg-type]  # nothing pending: every slot is filled
        finished: list[Result] = []
        for start in range(0, pending.samples, self.max_batch):
            finished += self._finish(pending.select(start, start + self.max_batch))
        return progress.complete(finished)

    def _finish(self, pending: Pending) -> list[Result]:
        """Offload ``pending`` in one request; on any failure, finish it here."""
        return offload_or_resume(self.engine, self.client, self.tail, self.codec, pending, classes=self._classes)

    def __repr__(self) -> str:
        return f"OffloadRunner(split={self.split}, tail={self.tail.model!r}, client={self.client!r})"


def offload_or_resume(
    engine: Engine, client: TailClient | None, tail: TailSpec, codec: Codec, pending: Pending, *,
    classes: int | None = None,
) -> list[Result]:  # fmt: skip
    """Offload ``pending`` (from its boundary, to ``tail``) in one request; on any failure (or with
    no ``client``), finish it here. One Result per pending sample, each with its OffloadInfo: the
    one promise of the device layer, shared by OffloadRunner and PolicyRunner."""
    samples = pending.samples

    def info(bytes_sent: int, transfer_ms: float, attempts: int, **fields: object) -> OffloadInfo:
        return OffloadInfo(boundary=pending.boundary, codec=tail.codec, model=tail.model, bytes_sent=bytes_sent,
                           transfer_ms=transfer_ms, batch=samples, attempts=attempts, **fields)  # type: ignore[arg-type]  # fmt: skip

    try:
        if client is None:
            raise OffloadError("no tail server was given (no --server): finished on this device")
        encoded = codec.encode_boundary(engine.boundary_tensors(pending))
        reply = client.infer(tail.model, encoded, package_id=engine.manifest.package_id, classes=classes)
        infos = [
            info(share, reply.transfer_ms, reply.attempts, server=reply.server, queue_ms=reply.queue_ms,
                 compute_ms=reply.compute_ms, server_ms=reply.server_ms, expected_server_ms=reply.expected_server_ms)
            for share in _shares(reply.bytes_sent, samples)
        ]  # fmt: skip
        results = engine.tail_results(pending, reply.logits)
        return [dataclasses.replace(r, offload=i) for r, i in zip(results, infos, strict=True)]
    except Exception as err:  # no request is lost: every failure ends in a local answer
        if isinstance(err, OffloadError):
            log.debug("offload fell back: %s", err)
        else:
            log.warning("offload fell back on an unexpected %s: %s", type(err).__name__, err)
        reason = str(err) if isinstance(err, OffloadError) else f"{type(err).__name__}: {err}"
        sent = getattr(err, "bytes_sent", 0)
        spent = getattr(err, "transfer_ms", 0.0)
        attempts = getattr(err, "attempts", 0)
        shed = {"shed": True, "expected_server_ms": err.expected_server_ms} if isinstance(err, OffloadShed) else {}
        infos = [info(share, spent, attempts, fallback=True, reason=reason, **shed) for share in _shares(sent, samples)]
    local = [engine.resume(pending)] if samples == 1 else engine.resume_batch(pending)
    return [dataclasses.replace(r, offload=i) for r, i in zip(local, infos, strict=True)]


def _shares(total: int, samples: int) -> list[int]:
    """``total`` bytes split over ``samples`` so that the shares sum to it exactly."""
    base, extra = divmod(int(total), samples)
    return [base + (1 if i < extra else 0) for i in range(samples)]


def _configured_max_batch(engine: Engine, model: str) -> int | None:
    """The tail's max_batch_size from the package's config.pbtxt, when the package has it."""
    path = engine.package.path(f"tails/{model}/{CONFIG_FILE}")
    if not path.is_file():
        return None
    try:
        found = int(read_config(path).max_batch_size)
    except PackageError:
        return None
    return found if found > 0 else None
