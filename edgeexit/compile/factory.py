"""Resolve ``MODULE:FACTORY`` (or a zoo name) to a ``MultiExitModel``, as the CLI does."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import EdgeExitError, ModelError


def build_from_factory(spec: str, kwargs: Mapping[str, object] | None = None) -> MultiExitModel:
    """``pkg.module:function`` (the current directory is importable) or a built-in zoo name."""
    return require_model(build_object(spec, kwargs), spec)


def build_object(spec: str, kwargs: Mapping[str, object] | None = None) -> object:
    """What ``spec`` builds, unchecked: a ``MultiExitModel``, or a ``DecoderSource`` for a decoder
    LLM (a built-in decoder name, or a MODULE:FUNCTION returning one)."""
    from edgeexit.compile import zoo
    from edgeexit.compile.decoders.zoo import DECODERS, list_decoders

    kwargs = dict(kwargs or {})
    if ":" not in spec:
        if spec in zoo.MODELS:
            return _call(zoo.MODELS.get(spec), spec, kwargs)
        if spec in DECODERS:
            return _call(DECODERS.get(spec), spec, kwargs)
        raise ModelError(
            f"factory {spec!r} is neither MODULE:FUNCTION nor a built-in model; "
            f"built-in models: {', '.join(zoo.list_models())}; decoders: {', '.join(list_decoders())}"
        )
    module_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(
            f"cannot import module {module_name!r} for factory {spec!r}: {err}; "
            "expected an importable module (run from its directory or install it)"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"module {module_name!r} has no callable {attr!r}; expected a function returning a model")
    return _call(factory, spec, kwargs)


def _call(factory: object, spec: str, kwargs: dict[str, object]) -> object:
    try:
        return factory(**kwargs)  # type: ignore[operator]
    except EdgeExitError:
        raise
    except TypeError as err:
        raise ModelError(f"factory {spec!r} rejected arguments {kwargs}: {err}") from None


def require_model(model: object, spec: str) -> MultiExitModel:
    if not isinstance(model, MultiExitModel):
        raise ModelError(
            f"factory {spec!r} returned {type(model).__name__}; expected a MultiExitModel "
            "(wrap your backbone with edgeexit.compile.attach_exits)"
        )
    return model


def parse_factory_args(items: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values are JSON when they parse (numbers, lists), else strings."""
    parsed: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ModelError(f"factory argument {item!r} is not key=value")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed
