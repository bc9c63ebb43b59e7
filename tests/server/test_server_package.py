"""The real thing: ``edgeexit serve`` on the digits package's tails (written by the export).

A boundary tensor computed locally by the package's own segments, encoded with each codec and
sent with the package's id, must come back as the local run's final logits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeexit.errors import PackageError
from edgeexit.server import TailServer, load_models


def test_serving_a_package_serves_every_tail_it_lists(digits_server: TailServer, digits_local, wire) -> None:
    names = digits_server.models.names()
    expected = [wire.tail_name(digits_local.model, k, codec) for k in (-1, 0, 1) for codec in ("fp32", "fp16", "int8")]
    assert names == sorted(expected)
    assert {model.package_id for model in digits_server.models} == {digits_local.package_id}


@pytest.mark.parametrize("boundary", [0, 1])
@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_a_tail_returns_the_local_runs_logits(
    digits_server: TailServer, connect, wire, digits_local, boundary: int, codec: str
) -> None:
    client = connect(digits_server)
    payload = wire.encode(codec, digits_local.hidden[boundary])
    name = wire.tail_name(digits_local.model, boundary, codec)
    request = wire.request(name, payload, package_id=digits_local.package_id)
    got = wire.logits(client.stub.ModelInfer(request, timeout=30))
    # exactly what the tail computes locally on the same encoded tensor ...
    local_tail = wire.reference(digits_local.package / "tails" / name / "1" / "model.onnx", payload)
    np.testing.assert_allclose(got, local_tail, rtol=1e-5, atol=1e-5)
    # ... which, through fp32, is the local run's final logits; fp16 and int8 keep its answers
    if codec == "fp32":
        np.testing.assert_allclose(got, digits_local.logits, rtol=1e-4, atol=1e-4)
    agreement = float(np.mean(got.argmax(1) == digits_local.logits.argmax(1)))
    assert agreement >= 0.9


def test_a_tensor_from_other_weights_is_failed_precondition(
    digits_server: TailServer, connect, wire, digits_local
) -> None:
    client = connect(digits_server)
    name = wire.tail_name(digits_local.model, 1, "int8")
    request = wire.request(name, wire.encode("int8", digits_local.hidden[1]), package_id="0" * 32)
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert digits_local.package_id in caught.value.details()


def test_an_altered_tail_is_refused_before_serving(package_copy: Path, digits_local, wire) -> None:
    name = wire.tail_name(digits_local.model, 0, "fp16")
    graph = package_copy / "tails" / name / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\x00")
    with pytest.raises(PackageError, match=rf"{name}/1/model.onnx was altered"):
        load_models([package_copy])


def test_a_package_missing_its_tails_is_refused(package_copy: Path) -> None:
    shutil.rmtree(package_copy / "tails")
    with pytest.raises(PackageError, match="is missing; the manifest lists it"):
        load_models([package_copy])


def test_a_tail_the_manifest_does_not_list_is_refused(package_copy: Path, digits_local, wire) -> None:
    tails = package_copy / "tails"
    source = tails / wire.tail_name(digits_local.model, 0, "fp32")
    stowaway = tails / "stowaway"  # a well-formed model, just not one the manifest hashes
    shutil.copytree(source, stowaway)
    config = stowaway / "config.pbtxt"
    config.write_text(config.read_text(encoding="utf-8").replace(source.name, "stowaway"), encoding="utf-8")
    with pytest.raises(PackageError, match="stowaway, which the package's manifest does not list"):
        load_models([package_copy])
