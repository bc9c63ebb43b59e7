"""Checkpoints: a state dict plus a little metadata, loaded with ``weights_only=True``.

``weights_only`` means loading never runs pickled code, so a checkpoint from elsewhere is safe to
open. A checkpoint of another architecture is a ModelError listing the keys that do not fit.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from edgeexit.compile.model import MultiExitModel
from edgeexit.errors import ModelError
from edgeexit.fileio import atomic_write_bytes

CHECKPOINT_FORMAT = "edgeexit-checkpoint"


def save_checkpoint(model: MultiExitModel, path: str | Path) -> None:
    state = model.state_dict()
    lazy = [k for k, v in state.items() if _is_uninitialized(v)]
    if lazy:  # they would pickle as objects that a weights_only load refuses
        raise ModelError(
            f"model {model.name!r} has lazy layers that never saw an input ({_few(lazy)}); "
            "expected a trained model, or call model.materialize(input_shape) before saving"
        )
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model_name": model.name, "state_dict": state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(model: MultiExitModel, path: str | Path) -> MultiExitModel:
    """Load weights in place; lazy head layers take their shapes from the checkpoint."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"weights file {file} does not exist; expected a checkpoint from `edgeexit train`")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(
            f"{file} is not a readable PyTorch checkpoint ({type(err).__name__}: {str(err)[:200]}); "
            "expected a file written by `edgeexit train` or torch.save(state_dict)"
        ) from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{file} holds no state dict; expected {{'state_dict': ...}} or a plain state dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and not _is_uninitialized(own[k]) and own[k].shape != state[k].shape
    ]
    if missing or unexpected or mismatched:
        details = "; ".join(
            part
            for part in (
                f"missing {_few(missing)}" if missing else "",
                f"unexpected {_few(unexpected)}" if unexpected else "",
                f"shape mismatch {_few(mismatched)}" if mismatched else "",
            )
            if part
        )
        raise ModelError(
            f"{file} does not fit model {model.name!r} (written for {payload.get('model_name', 'unknown')!r}): "
            f"{details}. Expected weights saved from the same factory"
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def _is_uninitialized(t: torch.Tensor) -> bool:
    return isinstance(t, torch.nn.parameter.UninitializedParameter | torch.nn.parameter.UninitializedBuffer)


def _few(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
