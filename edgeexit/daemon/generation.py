"""The device daemon serving a decoder package: a text prompt in, the generated text out (KServe v2).

When ``device.toml``'s package is a decoder package, the daemon's one model takes:

- input ``prompt``: BYTES ``[1]``, UTF-8 text, as ``raw_input_contents`` (KServe v2's BYTES
  serialization: a 4-byte little-endian length, then the bytes; what tritonclient sends) or as
  ``contents.bytes_contents``;
- optional request parameters: ``max_new_tokens`` (int64, default 64, at most the context),
  ``mode`` (string: ``full``, ``early-exit``, ``speculative``), ``chat`` (bool: frame the prompt
  with the model's chat template), ``temperature`` (double, 0: greedy), ``seed`` (int64),
  ``criterion`` (string, early exit's), ``package_id`` (string, checked as for classifiers).

and answers outputs ``text`` (BYTES ``[1]``) and ``tokens`` (INT64 ``[n]``, the generated ids),
with response parameters ``tokens_per_s``, ``mean_layers`` (double), ``mode``, ``finish``
(string: ``stop`` or ``length``), ``tokens``, ``prompt_tokens`` (int64) and ``latency_ms``.

Streaming (Triton's ModelStreamInfer, a response per token) is not served: the device's service
is unary like the rest of edgeexit's v2 surface, and a client that wants tokens as they come
asks for fewer tokens per call (``max_new_tokens``) and continues from the text so far.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from edgeexit.daemon.config import DaemonConfig
from edgeexit.errors import InputError
from edgeexit.generation.engine import MODES, DecoderEngine, Generation
from edgeexit.generation.manifest import DecoderManifest
from edgeexit.kserve.request import string_parameter
from edgeexit.kserve.response import set_parameter
from edgeexit.kserve.status import failed_precondition, invalid
from edgeexit.signing import TrustedKeys
from edgeexit.transport.generated import grpc_service_pb2 as pb

PROMPT = "prompt"
OUTPUTS = {"text": "BYTES", "tokens": "INT64"}
DEFAULT_NEW_TOKENS = 64


class GenerationRuntime:
    """A decoder package's engine and its one worker thread (an engine is not thread-safe)."""

    kind = "decoder"

    def __init__(self, config: DaemonConfig, *, generation: int = 1) -> None:
        self.config = config
        self.generation = generation
        keys = config.engine.trusted_keys
        trusted = TrustedKeys.load(keys) if keys else None  # given: the signature first, then every hash
        self.engine = DecoderEngine(config.package, threads=config.threads, trusted_keys=trusted)
        self.manifest: DecoderManifest = self.engine.manifest
        self.mode = "generate"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgeexit-generate-{self.generation}")
        self._lock = threading.Lock()
        self._closed = False

    async def generate(self, prompt: str, options: dict[str, Any]) -> Generation:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self.engine.generate(prompt, **options))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)

    def describe(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "package": str(self.config.package),
            "package_id": self.manifest.package_id,
            "model": self.manifest.model_name,
            "threads": self.config.threads,
            "mode": self.mode,
        }


def metadata(runtime: GenerationRuntime, version: str) -> pb.ModelMetadataResponse:
    name = runtime.manifest.model_name
    response = pb.ModelMetadataResponse(name=name, versions=[version], platform="edgeexit-decoder")
    response.inputs.add(name=PROMPT, datatype="BYTES", shape=[1])
    response.outputs.add(name="text", datatype="BYTES", shape=[1])
    response.outputs.add(name="tokens", datatype="INT64", shape=[-1])
    return response


def decode_request(request: pb.ModelInferRequest, runtime: GenerationRuntime) -> tuple[str, dict[str, Any]]:
    """The prompt and ``generate``'s options from a ModelInfer request; INVALID_ARGUMENT with the
    reason (and what is expected) for anything else."""
    manifest = runtime.manifest
    expected = (
        f"Model {manifest.model_name!r} expects one input {PROMPT!r} BYTES [1] (UTF-8 text) and optional "
        "parameters max_new_tokens, mode, chat, temperature, seed, criterion"
    )
    given = string_parameter(request, "package_id")
    if given is not None and given != manifest.package_id:
        raise failed_precondition(
            f"the request names package_id {given!r} but this device runs package_id {manifest.package_id!r}"
        )
    if len(request.inputs) != 1 or request.inputs[0].name != PROMPT:
        raise invalid(f"the request has inputs {[t.name for t in request.inputs]}. {expected}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES" or [int(d) for d in tensor.shape] != [1]:
        raise invalid(f"input {PROMPT!r} is {tensor.datatype} {list(tensor.shape)}. {expected}")
    if tensor.HasField("contents"):
        items = list(tensor.contents.bytes_contents)
        if len(items) != 1:
            raise invalid(f"input {PROMPT!r} holds {len(items)} byte strings in contents. {expected}")
        raw = items[0]
    elif len(request.raw_input_contents) == 1:
        raw = _unpack_bytes(request.raw_input_contents[0])
    else:
        raise invalid(
            f"input {PROMPT!r} has no contents and {len(request.raw_input_contents)} raw contents. {expected}"
        )
    try:
        prompt = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise invalid(f"input {PROMPT!r} is not UTF-8 ({err}). {expected}") from None
    options: dict[str, Any] = {"max_new_tokens": DEFAULT_NEW_TOKENS}
    kinds = {"max_new_tokens": "int64_param", "seed": "int64_param", "temperature": "double_param",
             "chat": "bool_param", "mode": "string_param", "criterion": "string_param"}  # fmt: skip
    for key, kind in kinds.items():
        if key not in request.parameters:
            continue
        parameter = request.parameters[key]
        found = parameter.WhichOneof("parameter_choice")
        if found != kind and not (kind == "double_param" and found == "int64_param"):
            raise invalid(f"request parameter {key!r} must be a {kind}; found {found}. {expected}")
        options[key] = getattr(parameter, found)
    if "mode" in options and options["mode"] not in MODES:
        raise invalid(f"request parameter mode {options['mode']!r}; expected one of {', '.join(MODES)}")
    return prompt, options


def response(request: pb.ModelInferRequest, runtime: GenerationRuntime, result: Generation, latency_ms: float,
             version: str) -> pb.ModelInferResponse:  # fmt: skip
    out = pb.ModelInferResponse(model_name=runtime.manifest.model_name, model_version=version, id=request.id)
    text = result.text.encode("utf-8")
    out.outputs.add(name="text", datatype="BYTES", shape=[1])
    out.raw_output_contents.append(struct.pack("<I", len(text)) + text)
    tokens = np.asarray(result.tokens, dtype="<i8")
    out.outputs.add(name="tokens", datatype="INT64", shape=[int(tokens.size)])
    out.raw_output_contents.append(tokens.tobytes())
    for key, value in (("tokens_per_s", float(result.tokens_per_s)), ("mean_layers", float(result.mean_layers)),
                       ("mode", result.mode), ("finish", result.finish), ("tokens", len(result.tokens)),
                       ("prompt_tokens", int(result.prompt_tokens)), ("latency_ms", float(latency_ms))):  # fmt: skip
        set_parameter(out.parameters, key, value)
    for key in ("acceptance_rate", "mean_accepted"):
        if key in result.details:
            set_parameter(out.parameters, key, float(result.details[key]))
    return out


def _unpack_bytes(raw: bytes) -> bytes:
    """One element of KServe v2's BYTES serialization: a little-endian uint32 length, the bytes."""
    if len(raw) < 4:
        raise InputError("raw_input_contents[0] is shorter than the 4-byte length of a BYTES element")
    (length,) = struct.unpack_from("<I", raw)
    if length != len(raw) - 4:
        raise InputError(
            f"raw_input_contents[0] declares {length} bytes but holds {len(raw) - 4}; expected one BYTES element "
            "(a 4-byte little-endian length, then the UTF-8 text)"
        )
    return raw[4:]
