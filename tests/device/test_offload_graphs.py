"""Offloading the generic adapter's models: every carried tensor crosses the wire, encoded on its own.

The U-Net's boundaries carry 3 and 2 tensors (its skips), the two-input model's carry its side
vector, MobileNetV2's and ConvNeXt's one tensor each; all four packages are served by one real
``edgeexit serve`` subprocess on 127.0.0.1, and every boundary (the input included) is offloaded
with every codec. The answers must be the device's own
at full depth (fp32, fp16 to their tolerance; int8 to the class), and a dead server must cost
nothing but the fallback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeexit.compile import create_model, export
from edgeexit.device import OffloadRunner
from edgeexit.procs import SERVE_READY_PREFIX, ChildProcess
from edgeexit.runtime import Engine
from edgeexit.runtime.verify import verify_package
from edgeexit.transport.client import TailClient

CODECS = ("fp32", "fp16", "int8")
MODELS = ("graph_mobilenet_v2", "graph_unet", "graph_convnext", "graph_two_inputs")


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("graphs")
    found = {}
    for name in MODELS:
        model = create_model(name).eval()
        shape = (1, *model.example_inputs((1,))[0].shape[1:])
        found[name] = export(model, shape, root / name, codecs=CODECS).root
    return found


@pytest.fixture(scope="module")
def address(packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache")), "COLUMNS": "200"}
    command = [sys.executable, "-m", "edgeexit", "serve", *map(str, packages.values()), "--listen", "127.0.0.1:0"]
    child = ChildProcess(command, env=env, name="edgeexit serve")
    try:
        yield child.wait_ready(SERVE_READY_PREFIX, timeout_s=60)
    finally:
        child.stop()


def _feeds(name: str, n: int, package: Path) -> list[object]:
    """``n`` inputs on which the package's untrained model is clearly decided: of 32 seeded ones, those
    with the widest gap between its two likeliest classes at full depth. Random weights leave some
    inputs within 5e-4 of a tie, where an fp16 or int8 rounding (or another CPU's last bits) could
    flip the class that the tests hold every offloaded answer to."""
    model = create_model(name)
    generator = torch.Generator().manual_seed(2)
    values = [torch.randn(e.shape, generator=generator).numpy() for e in model.example_inputs((32,))]
    names = (model.input_name, *model.context_names)
    rows = [values[0][i : i + 1] if not model.context_names else
            {k: v[i : i + 1] for k, v in zip(names, values, strict=True)} for i in range(32)]  # fmt: skip
    full = Engine(package, cache_dir=None, threshold=1.01)
    gaps = [np.diff(np.sort(full.run(row).probabilities)[-2:])[0] for row in rows]  # type: ignore[arg-type]
    return [rows[i] for i in np.argsort(gaps)[::-1][:n]]


def test_tails_take_every_carried_tensor_and_verify(packages: dict[str, Path]) -> None:
    unet = Engine(packages["graph_unet"], cache_dir=None).manifest
    tails = {(t.boundary, t.codec): t for t in unet.tails}
    assert set(tails) == {(b, c) for b in (-1, 0, 1) for c in CODECS}
    fp32 = [tails[(b, "fp32")].encoded_bytes for b in (0, 1)]
    assert fp32 == [unet.segments[0].hidden_bytes, unet.segments[1].hidden_bytes]  # all three, then two tensors
    assert tails[(0, "int8")].encoded_bytes == unet.segments[0].hidden_bytes // 4
    for path in packages.values():
        report = verify_package(path)
        assert report.ok
        assert sum(c.graph.startswith("tail ") for c in report.checks) == 3 * (len(report.package.manifest.segments))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("codec", CODECS)
def test_offload_at_every_boundary_answers_as_the_device_does(
    packages: dict[str, Path], address: str, name: str, codec: str
) -> None:
    engine = Engine(packages[name], cache_dir=None, threshold=1.01)  # no early exit: every sample travels
    feeds = _feeds(name, 4, packages[name])
    local = [engine.run(feed) for feed in feeds]
    client = TailClient([address], timeout_s=10.0)
    for split in range(-1, len(engine.segments) - 1):  # the input, then every boundary
        runner = OffloadRunner(engine, client, split=split, codec=codec)
        for feed, want in zip(feeds, local, strict=True):
            got = runner.run(feed)  # type: ignore[arg-type]
            assert got.offload is not None
            assert not got.offload.fallback, got.offload.reason
            assert got.prediction == want.prediction
            if codec != "int8":
                np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-3)


def test_a_dead_server_leaves_every_sample_answered_here(packages: dict[str, Path]) -> None:
    engine = Engine(packages["graph_unet"], cache_dir=None, threshold=1.01)
    feeds = _feeds("graph_unet", 2, packages["graph_unet"])
    runner = OffloadRunner(engine, TailClient(["127.0.0.1:1"], timeout_s=0.5), split=0, codec="int8")
    for feed in feeds:
        got = runner.run(feed)  # type: ignore[arg-type]
        assert got.offload is not None
        assert got.offload.fallback
        np.testing.assert_allclose(got.probabilities, engine.run(feed).probabilities, atol=1e-6)


def test_scales_sent_as_tensors_as_triton_takes_them(packages: dict[str, Path], address: str) -> None:
    engine = Engine(packages["graph_unet"], cache_dir=None, threshold=1.01)
    feed = _feeds("graph_unet", 1, packages["graph_unet"])[0]
    client = TailClient([address], timeout_s=10.0, side_inputs="tensors")  # scale_j / zero_point_j as [N, 1] inputs
    got = OffloadRunner(engine, client, split=0, codec="int8").run(feed)  # type: ignore[arg-type]
    assert got.offload is not None
    assert not got.offload.fallback, got.offload.reason
    assert got.prediction == engine.run(feed).prediction


def test_the_wire_round_trips_a_boundary_of_several_tensors() -> None:
    from edgeexit.codecs import create_codec
    from edgeexit.transport.wire import build_request, read_request

    rng = np.random.default_rng(0)
    tensors = [rng.normal(size=(2, 8, 4, 4)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)]
    encoded = create_codec("int8").encode_boundary(tensors)
    request = build_request("m", encoded, package_id="p")
    assert [t.name for t in request.inputs] == ["hidden", "hidden_1"]
    assert {"scale", "zero_point", "scale_1", "zero_point_1"} <= set(request.parameters)
    package_id, back = read_request(request)
    assert package_id == "p"
    assert len(back.parts) == 2
    for sent, received in zip(encoded.parts, back.parts, strict=True):
        np.testing.assert_array_equal(sent.data, received.data)
        assert (sent.scale, sent.zero_point) == (received.scale, received.zero_point)
    assert encoded.nbytes == sum(t.size for t in tensors)  # one byte per value, per tensor


def test_policies_count_every_tensor_a_boundary_carries(packages: dict[str, Path], address: str) -> None:
    """The U-Net's skips make each cut 12-14x its input: a policy that saw only the hidden tensor
    would misjudge every boundary. On a slow device and a slow link it keeps everything here; on a
    fast link it sends the input, the cheapest thing to send."""
    from edgeexit.device import PolicyRunner
    from edgeexit.policy import DeviceCosts, LinkEstimator, create_policy

    engine = Engine(packages["graph_unet"], cache_dir=None, threshold=1.01)
    manifest = engine.manifest
    costs = DeviceCosts.from_manifest(manifest, (50.0,) * 3, codec="int8", active_w=5.0, idle_w=1.0)
    assert costs.encoded_bytes == tuple(s.hidden_bytes // 4 for s in manifest.segments[:-1])  # every tensor, int8
    assert costs.input_bytes == 28 * 28
    feeds = _feeds("graph_unet", 3, packages["graph_unet"])
    with TailClient([address], timeout_s=10.0) as client:
        for bits_per_s, where in ((2e4, None), (1e9, -1)):  # 20 kbit/s: local; 1 Gbit/s: the input
            link = LinkEstimator()
            link.observe_probe(1e-4)
            assert link.observe_transfer(int(bits_per_s / 8), 1.0)
            runner = PolicyRunner(engine, client, create_policy("adaptive", costs), codec="int8", estimator=link)
            for feed in feeds:
                got = runner.run(feed)  # type: ignore[arg-type]
                assert got.prediction == engine.run(feed).prediction
                assert (got.offload.boundary if got.offload and got.offload.offloaded else None) == where
