"""``edgeexit run`` as a real subprocess on real files: tables, JSON, overrides, batches and clean errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeexit.runtime import Engine


@pytest.fixture
def cli(edgeexit_cli: list[str], tmp_path: Path):
    """Run ``edgeexit`` in tmp_path with a private cache and a wide terminal (no wrapped tables)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"), "COLUMNS": "200", "NO_COLOR": "1"}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*edgeexit_cli, *map(str, args)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
        )

    return run


@pytest.fixture
def inputs(tmp_path: Path, digits) -> dict[str, Path]:
    files = {
        "one": tmp_path / "one.npy",
        "batch": tmp_path / "batch.npy",
        "labelled": tmp_path / "labelled.npz",
        "image": tmp_path / "digit.png",
    }
    np.save(files["one"], digits.x[0])
    np.save(files["batch"], digits.x[1:4])
    np.savez(files["labelled"], x=digits.x[10:14], y=digits.y[10:14])
    Image.fromarray(np.round(digits.x[20, 0] * 255).astype(np.uint8), mode="L").save(files["image"])
    return files


def _expected(engine: Engine, digits) -> dict[str, tuple[int, int]]:
    """What the Python API says, per input name: (prediction, exit)."""
    rows = {"one.npy": engine.run(digits.x[0])}
    rows.update({f"batch.npy[{i}]": engine.run(digits.x[1 + i]) for i in range(3)})
    rows.update({f"labelled.npz[{i}]": engine.run(digits.x[10 + i]) for i in range(4)})
    rows["digit.png"] = engine.run((np.round(digits.x[20] * 255) / 255).astype(np.float32))
    return {name: (r.prediction, r.exit) for name, r in rows.items()}


def _assert_clean_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- output


def test_run_prints_a_table_row_per_input(cli, digits_package: Path, inputs: dict[str, Path], digits) -> None:
    done = cli("run", digits_package, *inputs.values())
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    expected = _expected(Engine(digits_package, cache_dir=None), digits)
    header = next(line for line in done.stdout.splitlines() if "prediction" in line)
    assert "exit" in header
    assert "input" in header
    for name, (prediction, exit_) in expected.items():
        row = next((line for line in done.stdout.splitlines() if f" {name} " in line), None)
        assert row is not None, f"{name} missing from:\n{done.stdout}"
        cells = [c.strip() for c in row.strip("│┃| \n").split("│")]
        assert cells[0] == name
        assert cells[1] == str(prediction)
        assert cells[3] == str(exit_)
    assert "9 input(s)" in done.stdout


def test_run_json(cli, digits_package: Path, inputs: dict[str, Path], digits) -> None:
    done = cli("run", digits_package, *inputs.values(), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    expected = _expected(Engine(digits_package, cache_dir=None), digits)
    assert [row["input"] for row in rows] == list(expected)
    for row in rows:
        assert {"prediction", "label", "exit", "probabilities", "latency_ms"} <= set(row)
        assert (row["prediction"], row["exit"]) == expected[row["input"]]
        assert row["label"] == digits.labels[row["prediction"]]
        assert len(row["probabilities"]) == 10
        assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert row["latency_ms"] >= 0
        assert len(row["segment_ms"]) == row["exit"] + 1
        if row["input"].startswith("labelled.npz"):
            i = int(row["input"][len("labelled.npz[") : -1])
            assert row["true_label"] == digits.labels[int(digits.y[10 + i])]
        else:
            assert "true_label" not in row


def test_run_with_a_criterion_and_threshold(cli, digits_package: Path, inputs: dict[str, Path], digits) -> None:
    done = cli("run", digits_package, inputs["batch"], inputs["labelled"], "--json", "--criterion", "margin",
               "--threshold", "0.5")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    engine = Engine(digits_package, cache_dir=None, criterion="margin", threshold=0.5)
    xs = np.concatenate([digits.x[1:4], digits.x[10:14]])
    for row, x in zip(rows, xs, strict=True):
        result = engine.run(x)
        assert (row["prediction"], row["exit"]) == (result.prediction, result.exit)
        if row["exit"] < engine.num_exits - 1:
            assert row["score"] >= 0.5


def test_threshold_zero_stops_at_the_first_exit(cli, digits_package: Path, inputs: dict[str, Path]) -> None:
    done = cli("run", digits_package, inputs["batch"], "--json", "--threshold", "0")
    assert done.returncode == 0, done.stderr
    assert {row["exit"] for row in json.loads(done.stdout)} == {0}


def test_batch_gives_the_same_answers(cli, digits_package: Path, inputs: dict[str, Path]) -> None:
    one_by_one = cli("run", digits_package, *inputs.values(), "--json")
    batched = cli("run", digits_package, *inputs.values(), "--json", "--batch")
    assert one_by_one.returncode == 0, one_by_one.stderr
    assert batched.returncode == 0, batched.stderr
    a, b = json.loads(one_by_one.stdout), json.loads(batched.stdout)
    assert [r["input"] for r in a] == [r["input"] for r in b]
    assert [(r["prediction"], r["exit"]) for r in a] == [(r["prediction"], r["exit"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_allclose(ra["probabilities"], rb["probabilities"], atol=1e-5)
        assert ra.get("true_label") == rb.get("true_label")


def test_run_uses_the_private_cache(cli, digits_package: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    done = cli("run", digits_package, inputs["one"])
    assert done.returncode == 0, done.stderr
    cached = list((tmp_path / "xdg-cache" / "edgeexit" / "ort").glob("*.onnx"))
    assert len(cached) == 3


# ---------------------------------------------------------------- errors: one line, status 1, no traceback


def test_a_garbage_image(cli, digits_package: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _assert_clean_error(cli("run", digits_package, "broken.png"), "broken.png")


def test_a_float64_npy(cli, digits_package: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "double.npy", np.zeros((1, 8, 8), np.float64))
    _assert_clean_error(cli("run", digits_package, "double.npy"), "double.npy", "float64", "float32")


def test_a_wrong_shape_npy(cli, digits_package: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((3, 8, 8), np.float32))
    _assert_clean_error(cli("run", digits_package, "wide.npy"), "channel count is 3", "expected 1")
    np.save(tmp_path / "flat.npy", np.zeros((64,), np.float32))
    _assert_clean_error(cli("run", digits_package, "flat.npy"), "flat.npy", "(64,)")


def test_a_wrong_shape_npy_in_a_batch(cli, digits_package: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.zeros((2, 1, 9, 9), np.float32))
    _assert_clean_error(cli("run", digits_package, "big.npy", "--batch"), "expected 8")


def test_a_missing_file(cli, digits_package: Path) -> None:
    _assert_clean_error(cli("run", digits_package, "nowhere.npy"), "nowhere.npy", "does not exist")


def test_an_unknown_input_type(cli, digits_package: Path, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("1,2\n")
    _assert_clean_error(cli("run", digits_package, "data.csv"), "data.csv", ".npy")


def test_an_unknown_criterion(cli, digits_package: Path, inputs: dict[str, Path]) -> None:
    line = _assert_clean_error(cli("run", digits_package, inputs["one"], "--criterion", "vibes"), "vibes")
    for known in ("max_prob", "margin", "entropy", "patience", "similarity"):
        assert known in line


def test_an_altered_package(cli, package_copy: Path, inputs: dict[str, Path]) -> None:
    graph = package_copy / "segments" / "0.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    _assert_clean_error(cli("run", package_copy, inputs["one"]), "0.onnx", "altered")


def test_a_missing_package(cli, inputs: dict[str, Path], tmp_path: Path) -> None:
    _assert_clean_error(cli("run", tmp_path / "no-package", inputs["one"]), "no-package", "does not exist")
