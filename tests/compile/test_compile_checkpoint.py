"""Checkpoints round-trip exactly, refuse other architectures, and never unpickle code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeexit.compile import attach_exits
from edgeexit.compile.checkpoint import load_checkpoint, save_checkpoint
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.zoo import demo_cnn, digits_cnn
from edgeexit.data import LabelledData
from edgeexit.errors import ModelError


def outputs(model: MultiExitModel, x: torch.Tensor) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return [z for z in model(x) if z is not None]


def lazy_factory() -> MultiExitModel:
    """No input_shape: the heads' lazy layers stay uninitialized until data or a checkpoint arrives."""
    backbone = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
    )
    return attach_exits(
        backbone, exits=[0, 2], head=["attention", "linear"], final_head="conv", head_options={},
        num_classes=4, name="lazy",
    )  # fmt: skip


def test_round_trip_gives_identical_outputs(digits_model: MultiExitModel, digits: LabelledData, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    save_checkpoint(digits_model, path)
    assert path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]  # written atomically, no temp left

    fresh = digits_cnn()
    x = torch.from_numpy(digits.x[:32])
    assert any(not torch.equal(a, b) for a, b in zip(outputs(fresh, x), outputs(digits_model, x), strict=True))
    assert load_checkpoint(fresh, path) is fresh
    assert not fresh.training
    for a, b in zip(outputs(fresh, x), outputs(digits_model, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    state = digits_model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())  # batch-norm statistics too


def test_round_trip_materializes_lazy_layers(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = lazy_factory()
    trained.materialize((1, 1, 5, 5))
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        trained.segments[1][0].running_mean.add_(0.5)  # a batch-norm buffer that differs from the default
    path = tmp_path / "lazy.pt"
    save_checkpoint(trained, path)

    torch.manual_seed(2)
    fresh = lazy_factory()
    assert any(isinstance(p, nn.parameter.UninitializedParameter) for p in fresh.parameters())
    load_checkpoint(fresh, path)
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in fresh.parameters())
    x = torch.randn(3, 1, 5, 5)
    for a, b in zip(outputs(fresh, x), outputs(trained, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plain_state_dict_is_accepted(digits_model: MultiExitModel, digits: LabelledData, tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(digits_model.state_dict(), path)
    fresh = load_checkpoint(digits_cnn(), path)
    x = torch.from_numpy(digits.x[:8])
    for a, b in zip(outputs(fresh, x), outputs(digits_model, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_other_architecture_names_the_keys_that_do_not_fit(digits_model: MultiExitModel, tmp_path: Path) -> None:
    path = tmp_path / "digits.pt"
    save_checkpoint(digits_model, path)
    target = demo_cnn()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ModelError) as info:
        load_checkpoint(target, path)
    message = str(info.value)
    assert "does not fit model 'demo_cnn'" in message
    assert "written for 'digits_cnn'" in message
    assert "missing segments.2.1." in message  # demo_cnn's fourth conv block
    assert "shape mismatch" in message
    assert "segments.0.0.0.weight: checkpoint (16, 1, 3, 3) vs model (32, 1, 3, 3)" in message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing half-loaded

    other = tmp_path / "demo.pt"
    save_checkpoint(target, other)
    with pytest.raises(ModelError, match=r"unexpected segments.2.1."):
        load_checkpoint(digits_cnn(), other)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(digits_cnn(), tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", bytes(range(256)) * 4])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(digits_cnn(), path)


@pytest.mark.parametrize("payload", [[1, 2, 3], {"state_dict": {"w": 3}}, {"format": "x", "state_dict": [1]}])
def test_file_without_a_state_dict(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(ModelError, match="holds no state dict"):
        load_checkpoint(digits_cnn(), path)


UNPICKLED: list[str] = []


def record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Payload:
    """Unpickling this calls a function: exactly what weights_only must refuse to do."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (record_unpickling, ("ran",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    state = digits_cnn().state_dict()
    torch.save({"state_dict": state, "extra": Payload()}, path)
    # The file is a real pickle that would run code with weights_only=False ...
    torch.load(path, weights_only=False)
    assert UNPICKLED == ["ran"]
    UNPICKLED.clear()
    # ... and the loader refuses it without running anything.
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint") as info:
        load_checkpoint(digits_cnn(), path)
    assert UNPICKLED == []
    assert "UnpicklingError" in str(info.value) or "weights_only" in str(info.value).lower()


def test_saving_uninitialized_lazy_layers_is_refused(tmp_path: Path) -> None:
    """Such a file could never be loaded again (weights_only refuses UninitializedParameter)."""
    path = tmp_path / "early.pt"
    with pytest.raises(ModelError, match=r"lazy layers that never saw an input.*materialize"):
        save_checkpoint(lazy_factory(), path)
    assert list(tmp_path.iterdir()) == []
