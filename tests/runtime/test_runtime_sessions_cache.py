"""The optimized-graph cache behind Engine(cache_dir=...): written once, reused, and rebuilt when damaged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeexit.runtime import Engine
from edgeexit.runtime.sessions import default_cache_dir


def _cached(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file())


def _outputs(engine: Engine, xs: np.ndarray) -> list[np.ndarray]:
    return [o for o in engine.run_full(xs, timing_samples=1).logits if o is not None]


def test_first_load_writes_one_optimized_graph_per_segment(digits_package: Path, tmp_path: Path, digits) -> None:
    cache = tmp_path / "cache"
    engine = Engine(digits_package, cache_dir=cache)
    files = _cached(cache)
    assert len(files) == len(engine.segments) == 3
    assert all(f.suffix == ".onnx" and f.stat().st_size > 0 for f in files)
    assert not any(f.name.startswith(".") or f.name.endswith(".tmp") for f in files)  # no partial files left
    hashes = {engine.manifest.files[s.file][:32] for s in engine.manifest.segments}
    assert {f.name[:32] for f in files} == hashes  # keyed by each graph's sha256
    assert all(ort.__version__ in f.name for f in files)
    for f in files:  # each one is a graph ONNX Runtime loads by itself
        ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    plain = Engine(digits_package, cache_dir=None)
    for a, b in zip(_outputs(engine, digits.x[:64]), _outputs(plain, digits.x[:64]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_second_engine_loads_from_the_cache(digits_package: Path, tmp_path: Path, digits) -> None:
    cache = tmp_path / "cache"
    first = Engine(digits_package, cache_dir=cache)
    before = {f: (f.stat().st_mtime_ns, f.stat().st_ino, f.read_bytes()) for f in _cached(cache)}
    second = Engine(digits_package, cache_dir=cache)
    after = {f: (f.stat().st_mtime_ns, f.stat().st_ino, f.read_bytes()) for f in _cached(cache)}
    assert after == before  # read back, not rewritten
    xs = digits.x[:100]
    for a, b in zip(_outputs(first, xs), _outputs(second, xs), strict=True):
        np.testing.assert_array_equal(a, b)
    for i in range(10):
        r1, r2 = first.run(xs[i]), second.run(xs[i])
        assert (r1.exit, r1.prediction) == (r2.exit, r2.prediction)
        np.testing.assert_array_equal(r1.probabilities, r2.probabilities)


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_a_corrupted_cache_file_is_rebuilt(digits_package: Path, tmp_path: Path, digits, damage: str) -> None:
    cache = tmp_path / "cache"
    reference = Engine(digits_package, cache_dir=cache)
    good = {f: f.read_bytes() for f in _cached(cache)}
    for f, data in good.items():
        if damage == "garbage":
            f.write_bytes(b"\x00garbage\xff" * 100)
        elif damage == "empty":
            f.write_bytes(b"")
        else:
            f.write_bytes(data[: len(data) // 2])
    rebuilt = Engine(digits_package, cache_dir=cache)
    files = _cached(cache)
    assert sorted(files) == sorted(good)
    for f in files:
        ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])  # a loadable graph again
    xs = digits.x[:64]
    for a, b in zip(_outputs(reference, xs), _outputs(rebuilt, xs), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    again = Engine(digits_package, cache_dir=cache)  # and the rebuilt files serve the next load
    for a, b in zip(_outputs(rebuilt, xs), _outputs(again, xs), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_cache_is_keyed_by_thread_count(digits_package: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    Engine(digits_package, cache_dir=cache, threads=1)
    Engine(digits_package, cache_dir=cache, threads=2)
    names = [f.name for f in _cached(cache)]
    assert len(names) == 6
    assert sum(n.endswith("-t1.onnx") for n in names) == 3
    assert sum(n.endswith("-t2.onnx") for n in names) == 3


def test_an_unusable_cache_dir_only_costs_cold_start(digits_package: Path, tmp_path: Path, digits) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    engine = Engine(digits_package, cache_dir=blocker)
    assert engine.run(digits.x[0]).prediction is not None
    assert blocker.read_text() == "a file where the cache directory should be"


def test_cache_dir_none_writes_nothing(
    digits_package: Path, tmp_path: Path, digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    Engine(digits_package, cache_dir=None).run(digits.x[0])
    assert not (tmp_path / "xdg").exists()


def test_the_default_cache_follows_xdg_cache_home(
    digits_package: Path, tmp_path: Path, digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edgeexit" / "ort"
    Engine(digits_package).run(digits.x[0])  # the default: a per-user cache
    assert len(_cached(tmp_path / "xdg" / "edgeexit" / "ort")) == 3
