"""``edgeexit calibrate`` as a real subprocess on real files: the rewritten manifest, what the engine then does
with it, the Pareto plot, and clean refusals that leave the package byte-identical."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeexit.calibration import digest_data
from edgeexit.data import LabelledData, load_dataset
from edgeexit.fileio import sha256_file
from edgeexit.manifest import CRITERION_NAMES, MANIFEST_FILE, Manifest
from edgeexit.runtime import Engine
from edgeexit.runtime.inputs import prepare_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PACKAGE_ENTRIES = {"manifest.json", "segments", "tails", "reference.npz", "monolithic.onnx"}
EXPORT_THRESHOLD = 0.9  # what `export` writes for every early exit before calibration
MAX_DROP = 0.02

Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def xdg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


def _run(cli: list[str], cache: Path, cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "NO_COLOR": "1"}
    return subprocess.run(
        [*cli, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def cli(edgeexit_cli: list[str], xdg_cache: Path, tmp_path: Path) -> Runner:
    """``edgeexit`` in tmp_path (where ``package_copy`` is ``pkg``)."""
    return lambda *args, cwd=tmp_path: _run(edgeexit_cli, xdg_cache, cwd, *args)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done.stdout


def _clean_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    both = f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 1, f"exit {done.returncode}\n{both}"
    assert "Traceback" not in done.stdout + done.stderr, both
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, both
    assert lines[0].startswith("error: "), both
    assert "error:" not in done.stdout, both
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def _manifest(package: Path) -> Manifest:
    return Manifest.from_json((package / MANIFEST_FILE).read_text(encoding="utf-8"))


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) > 100
        image.load()  # decodes every chunk: a truncated file fails here


def _strays(directory: Path) -> list[str]:
    """Temporary files an atomic write may leave behind (``.<name>.<random>.tmp``)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.name.endswith(".tmp"))


def _engine_accuracy(engine: Engine, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    results = engine.run_batch(x)
    predictions = np.array([-1 if r.prediction is None else r.prediction for r in results])
    exits = np.bincount([r.exit for r in results], minlength=engine.num_exits)
    return float(np.mean(predictions == y)), exits


# --- one calibration on the whole digits set, shared by the happy-path tests --------------------------------------


@dataclass(frozen=True)
class Calibrated:
    workdir: Path
    package: Path
    done: subprocess.CompletedProcess[str]
    before: Manifest
    after: Manifest


@pytest.fixture(scope="module")
def calibrated(
    tmp_path_factory: pytest.TempPathFactory, digits_package: Path, digits: LabelledData, edgeexit_cli, xdg_cache
) -> Calibrated:
    workdir = tmp_path_factory.mktemp("calibrate")
    package = workdir / "pkg"
    shutil.copytree(digits_package, package)
    digits.save_npz(workdir / "val.npz")
    before = _manifest(package)
    done = _run(
        edgeexit_cli, xdg_cache, workdir, "calibrate", "pkg", "--data", "val.npz", "--max-drop", str(MAX_DROP),
        "--plot", "out.png",
    )  # fmt: skip
    _ok(done)
    return Calibrated(workdir, package, done, before, _manifest(package))


def test_calibrate_prints_the_calibration_table(calibrated: Calibrated, digits: LabelledData) -> None:
    out = calibrated.done.stdout
    assert f"calibration (max drop 2 pt, 1 s.e. in reserve, {len(digits)} samples): accuracy" in out
    for column in ("exit", "criterion", "threshold", "temperature", "exit rate", "accuracy there", "segment ms"):
        assert column in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["0", "1", "2"]
    assert ["final" in row for row in rows] == [False, False, True]
    assert "Pareto plot: out.png" in out
    assert f"calibrated pkg on {len(digits)} samples (arrays in val.npz)" in out


def test_calibrate_records_what_it_chose_and_keeps_the_weights(
    calibrated: Calibrated, digits: LabelledData, digits_package: Path
) -> None:
    before, after = calibrated.before, calibrated.after
    assert before.calibration is None
    assert [spec.threshold for spec in before.exits if not spec.final] == [EXPORT_THRESHOLD] * 2
    record = after.calibration
    assert record is not None
    assert record.samples == len(digits)
    assert record.max_drop == MAX_DROP
    assert record.criterion == "max_prob"  # no --criterion: each exit keeps its own
    x, y = prepare_dataset(digits, after)
    assert record.data_sha256 == digest_data(x, y)
    assert len(record.data_sha256) == 64
    # thresholds moved off the export default, temperatures fitted, and the record says what the exits hold
    assert any(spec.threshold != EXPORT_THRESHOLD for spec in after.exits if not spec.final)
    assert any(spec.temperature != 1.0 for spec in after.exits)
    assert [e.exit for e in record.exits] == [0, 1, 2]
    for spec, entry in zip(after.exits, record.exits, strict=True):
        assert (entry.threshold, entry.temperature) == (spec.threshold, spec.temperature)
        assert 0.05 <= spec.temperature <= 20.0
    assert sum(e.exit_rate for e in record.exits) == pytest.approx(1.0)
    assert record.accuracy >= record.final_accuracy - MAX_DROP
    # weights untouched: same package_id, same file hashes, every file but the manifest byte-identical
    assert after.package_id == before.package_id
    assert after.files == before.files
    for relative, digest in after.files.items():
        assert sha256_file(calibrated.package / relative) == digest == sha256_file(digits_package / relative)
    assert [s.file for s in after.segments] == [s.file for s in before.segments]


def test_the_calibrated_package_still_verifies(calibrated: Calibrated, edgeexit_cli, xdg_cache) -> None:
    out = _ok(_run(edgeexit_cli, xdg_cache, calibrated.workdir, "verify", "pkg"))
    assert "verify pkg: 23 file hashes ok" in out  # 3 segments, monolithic, reference, 9 tails x 2 files
    assert "9 tail(s): config.pbtxt matches" in out  # the tails' configs still name the package_id
    assert f"ok: pkg (package_id {calibrated.before.package_id})" in out


def test_the_plot_is_a_png_written_where_asked(calibrated: Calibrated) -> None:
    _assert_png(calibrated.workdir / "out.png")
    assert not (calibrated.workdir / "pkg-pareto.png").exists()


def test_the_manifest_is_replaced_atomically(calibrated: Calibrated, digits_package: Path) -> None:
    assert {p.name for p in calibrated.package.iterdir()} == PACKAGE_ENTRIES
    assert sorted(p.name for p in (calibrated.package / "segments").iterdir()) == sorted(
        Path(s.file).name for s in calibrated.after.segments
    )
    assert _strays(calibrated.workdir) == []
    assert sorted(p.name for p in calibrated.workdir.iterdir()) == ["out.png", "pkg", "val.npz"]
    mode = (calibrated.package / MANIFEST_FILE).stat().st_mode & 0o777
    assert mode == (digits_package / MANIFEST_FILE).stat().st_mode & 0o777  # not mkstemp's private 0600


def test_the_engine_does_what_the_record_says(calibrated: Calibrated) -> None:
    record = calibrated.after.calibration
    assert record is not None
    data = load_dataset(calibrated.workdir / "val.npz")
    engine = Engine(calibrated.package, cache_dir=None)
    x, y = prepare_dataset(data, engine.manifest)
    accuracy, exits = _engine_accuracy(engine, x, y)
    assert accuracy == record.accuracy
    assert accuracy >= record.final_accuracy - MAX_DROP
    assert exits.tolist() == [round(e.exit_rate * len(y)) for e in record.exits]
    assert exits[:2].sum() > 0  # the early exits do take samples
    one_at_a_time = [engine.run(sample).prediction for sample in x[:300]]
    assert one_at_a_time == [r.prediction for r in engine.run_batch(x[:300])]
    # record.final_accuracy is the final exit's own accuracy: no early exit ever fires at threshold 2
    full_depth, full_exits = _engine_accuracy(Engine(calibrated.package, cache_dir=None, threshold=2.0), x, y)
    assert full_depth == record.final_accuracy
    assert full_exits.tolist() == [0, 0, len(y)]


# --- options -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["margin", "patience"])
def test_criterion_is_recorded_on_the_early_exits(
    criterion: str, cli: Runner, package_copy: Path, digits: LabelledData, tmp_path: Path
) -> None:
    digits.save_npz(tmp_path / "val.npz")
    plot = f"{criterion}[best].png"  # brackets: the printed path must not be eaten as rich markup
    out = _ok(cli("calibrate", "pkg", "--data", "val.npz", "--criterion", criterion, "--plot", plot))
    assert f"Pareto plot: {plot}" in out
    _assert_png(tmp_path / plot)
    manifest = _manifest(package_copy)
    record = manifest.calibration
    assert record is not None
    assert record.criterion == criterion
    assert [spec.criterion for spec in manifest.exits] == [criterion, criterion, "max_prob"]
    engine = Engine(package_copy, cache_dir=None)
    x, y = prepare_dataset(digits, manifest)
    accuracy, _ = _engine_accuracy(engine, x, y)
    assert accuracy == record.accuracy >= record.final_accuracy - 0.01


def test_unknown_criterion_is_refused(cli: Runner, package_copy: Path, digits: LabelledData, tmp_path: Path) -> None:
    digits.save_npz(tmp_path / "val.npz")
    before = (package_copy / MANIFEST_FILE).read_bytes()
    line = _clean_error(cli("calibrate", "pkg", "--data", "val.npz", "--criterion", "nonsense"), "'nonsense'")
    for name in CRITERION_NAMES:
        assert name in line
    assert (package_copy / MANIFEST_FILE).read_bytes() == before
    assert not (tmp_path / "pkg-pareto.png").exists()


def test_builtin_data_by_name_and_the_default_plot_path(cli: Runner, package_copy: Path, tmp_path: Path) -> None:
    out = _ok(cli("calibrate", "pkg", "--data", "digits", "--split", "test"))
    test_split = load_dataset("digits", split="test")
    manifest = _manifest(package_copy)
    record = manifest.calibration
    assert record is not None
    assert record.samples == len(test_split) < 1797
    assert record.max_drop == 0.01  # the default
    assert record.data_sha256 == digest_data(*prepare_dataset(test_split, manifest))
    assert "test split" in out
    assert "Pareto plot: pkg-pareto.png" in out
    _assert_png(tmp_path / "pkg-pareto.png")  # next to the package directory, not inside it
    assert {p.name for p in package_copy.iterdir()} == PACKAGE_ENTRIES
    assert _strays(tmp_path) == []


def test_calibrate_dot_puts_the_default_plot_next_to_the_package(
    cli: Runner, package_copy: Path, digits: LabelledData, tmp_path: Path
) -> None:
    digits.save_npz(tmp_path / "val.npz")
    out = _ok(cli("calibrate", ".", "--data", "../val.npz", cwd=package_copy))
    assert _manifest(package_copy).calibration is not None
    _assert_png(tmp_path / "pkg-pareto.png")
    assert f"Pareto plot: {tmp_path / 'pkg-pareto.png'}" in out
    assert {p.name for p in package_copy.iterdir()} == PACKAGE_ENTRIES


def test_without_matplotlib_it_calibrates_and_says_how_to_get_the_plot(
    edgeexit_cli: list[str], xdg_cache: Path, package_copy: Path, digits: LabelledData, tmp_path: Path
) -> None:
    """A device has no matplotlib: the manifest is still calibrated, the hint keeps its ``[plots]``."""
    digits.save_npz(tmp_path / "val.npz")
    # the CLI's interpreter, with matplotlib made unimportable (None in sys.modules) before edgeexit starts
    code = "import sys; sys.modules['matplotlib'] = None; import edgeexit.cli as c; c.main()"
    no_matplotlib = [edgeexit_cli[0], "-c", code]
    done = _run(no_matplotlib, xdg_cache, tmp_path, "calibrate", "pkg", "--data", "val.npz")
    out = _ok(done)
    assert "no Pareto plot: the Pareto plot needs matplotlib: pip install 'edgeexit[plots]'" in out
    assert _manifest(package_copy).calibration is not None
    assert not (tmp_path / "pkg-pareto.png").exists()


# --- refusals: exit 1, one error line, the manifest byte-identical ---------------------------------------------------


def _shape_mismatch(tmp_path: Path, package: Path, digits: LabelledData) -> tuple[str, list[str]]:
    x = np.zeros((12, 1, 9, 9), np.float32)
    LabelledData(x=x, y=digits.y[:12], labels=digits.labels, source="test").save_npz(tmp_path / "big.npz")
    return "big.npz", ["big.npz", "(1, 9, 9)", "expects (1, 8, 8)"]


def _class_mismatch(tmp_path: Path, package: Path, digits: LabelledData) -> tuple[str, list[str]]:
    # load_npz takes the class count from the stored "labels" names (else from the largest label)
    y = np.arange(12, dtype=np.int64) % 3
    LabelledData(x=digits.x[:12], y=y, labels=("a", "b", "c"), source="test").save_npz(tmp_path / "abc.npz")
    return "abc.npz", ["abc.npz", "3 classes", "10 outputs"]


def _missing_file(tmp_path: Path, package: Path, digits: LabelledData) -> tuple[str, list[str]]:
    return "nothere.npz", ["nothere.npz", "missing", "expected an .npz"]


def _garbage_file(tmp_path: Path, package: Path, digits: LabelledData) -> tuple[str, list[str]]:
    (tmp_path / "junk.npz").write_bytes(b"id,label\n1,3\n2,7\n")
    return "junk.npz", ["junk.npz", "not an .npz (zip) archive", "starts with b'id,label", "expected an .npz"]


def _altered_graph(tmp_path: Path, package: Path, digits: LabelledData) -> tuple[str, list[str]]:
    digits.save_npz(tmp_path / "val.npz")
    with (package / "segments" / "1.onnx").open("ab") as graph:
        graph.write(b"\0")
    return "val.npz", ["segments/1.onnx", "altered", "sha256", "manifest expects"]


def _format_version_2(tmp_path: Path, package: Path, digits: LabelledData) -> tuple[str, list[str]]:
    digits.save_npz(tmp_path / "val.npz")
    raw = json.loads((package / MANIFEST_FILE).read_text(encoding="utf-8"))
    raw["format_version"] = 2
    (package / MANIFEST_FILE).write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return "val.npz", ["manifest.json", "format_version 2", "reads version 1"]


@pytest.mark.parametrize(
    "setup",
    [_shape_mismatch, _class_mismatch, _missing_file, _garbage_file, _altered_graph, _format_version_2],
    ids=["sample-shape", "class-count", "missing-file", "not-npz", "altered-graph", "format-version-2"],
)
def test_refusals_leave_the_package_untouched(
    setup: Callable[[Path, Path, LabelledData], tuple[str, list[str]]],
    cli: Runner,
    package_copy: Path,
    digits: LabelledData,
    tmp_path: Path,
) -> None:
    data, fragments = setup(tmp_path, package_copy, digits)
    before = {p: p.read_bytes() for p in package_copy.rglob("*") if p.is_file()}
    _clean_error(cli("calibrate", "pkg", "--data", data, "--plot", "out.png"), *fragments)
    assert {p: p.read_bytes() for p in package_copy.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "out.png").exists()
    assert _strays(tmp_path) == []


def test_an_unwritable_plot_fails_before_the_manifest_changes(
    cli: Runner, package_copy: Path, digits: LabelledData, tmp_path: Path
) -> None:
    digits.save_npz(tmp_path / "val.npz")
    (tmp_path / "plots").mkdir()
    before = (package_copy / MANIFEST_FILE).read_bytes()
    _clean_error(cli("calibrate", "pkg", "--data", "val.npz", "--plot", "plots"), "Is a directory", "plots")
    assert (package_copy / MANIFEST_FILE).read_bytes() == before
    assert _strays(tmp_path) == []


def test_calibrate_with_delta_certifies_records_and_inspect_prints_the_guarantee(
    package_copy: Path, digits: LabelledData, cli: Runner, tmp_path: Path
) -> None:
    digits.save_npz(tmp_path / "val.npz")
    out = _ok(cli("calibrate", "pkg", "--data", "val.npz", "--max-drop", "0.03", "--delta", "0.1", "--against",
                  "labels", "--seed", "4", "--plot", "out.png"))  # fmt: skip
    assert "Learn-then-Test: P(drop against the labels > 3 pt) <= 0.1 on new data" in out
    record = _manifest(package_copy).calibration
    assert record is not None
    assert record.method == "ltt"
    found = record.guarantee
    assert found is not None
    assert (found.eps, found.delta, found.against, found.seed) == (0.03, 0.1, "labels", 4)
    assert found.tested == len(digits) - round(0.3 * len(digits))
    assert found.loss <= found.bound
    if found.certified:  # the thresholds it certified are the ones the manifest holds
        assert found.bound <= 0.03
        assert any(spec.threshold < 1.0 for spec in _manifest(package_copy).exits if not spec.final)
    inspected = _ok(cli("inspect", "pkg"))
    assert "calibrated (Learn-then-Test: P(drop against the labels > 3 pt) <= 0.1" in inspected


def test_calibrate_refuses_an_unknown_loss_before_running(package_copy: Path, cli: Runner) -> None:
    before = (package_copy / MANIFEST_FILE).read_bytes()
    _clean_error(cli("calibrate", "pkg", "--data", "val.npz", "--delta", "0.1", "--against", "oracle"),
                 "--against is 'oracle'; expected one of final, labels")  # fmt: skip
    assert (package_copy / MANIFEST_FILE).read_bytes() == before


def test_calibrate_with_a_budget_records_it_and_stays_within(
    package_copy: Path, digits: LabelledData, cli: Runner, tmp_path: Path
) -> None:
    digits.save_npz(tmp_path / "val.npz")
    # the segment costs are timed in the same pass: on a busy machine the cheapest plan measured 0.79 of
    # full depth (a fresh-clone CI beside the demo), so the budget leaves room for any timing
    out = _ok(cli("calibrate", "pkg", "--data", "val.npz", "--budget", "0.95", "--plot", "out.png"))
    record = _manifest(package_copy).calibration
    assert record is not None
    assert record.method == "budget"
    assert record.budget_ms is not None
    assert record.expected_latency_ms <= record.budget_ms
    assert f"compute budget {record.budget_ms:.4g} ms per sample" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--budget", "0.5", "--delta", "0.1"), "--delta and --budget are different ways to choose thresholds"),
        (("--budget-ms", "0.000001"), "cannot be met: the cheapest thresholds found cost"),
    ],
)
def test_calibrate_refuses_a_budget_it_cannot_use(
    package_copy: Path, digits: LabelledData, cli: Runner, tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    digits.save_npz(tmp_path / "val.npz")
    before = (package_copy / MANIFEST_FILE).read_bytes()
    _clean_error(cli("calibrate", "pkg", "--data", "val.npz", *flags), message)
    assert (package_copy / MANIFEST_FILE).read_bytes() == before


def test_calibrate_takes_the_segment_costs_from_a_profile_of_this_package(
    package_copy: Path, digits: LabelledData, cli: Runner, tmp_path: Path
) -> None:
    digits.save_npz(tmp_path / "val.npz")
    _ok(cli("profile", "pkg", "--runs", "5", "--warmup", "1", "--json", "prof.json"))
    profile = json.loads((tmp_path / "prof.json").read_text())
    for segment in profile["segments"]:  # equal costs: the budget's feasibility must not hang on timing
        segment["latency_p50_ms"] = 1.0
    (tmp_path / "prof.json").write_text(json.dumps(profile))
    p50 = [segment["latency_p50_ms"] for segment in profile["segments"]]
    _ok(cli("calibrate", "pkg", "--data", "val.npz", "--budget", "0.6", "--profile", "prof.json", "--plot", "o.png"))
    record = _manifest(package_copy).calibration
    assert record is not None
    assert record.budget_ms == pytest.approx(0.6 * sum(p50))  # the profile's times, not the pass's
    profile["package_id"] = "0" * 32  # a profile of other weights
    (tmp_path / "other.json").write_text(json.dumps(profile))
    before = (package_copy / MANIFEST_FILE).read_bytes()
    _clean_error(cli("calibrate", "pkg", "--data", "val.npz", "--profile", "other.json"),
                 "the profile was measured on package 00000000000000000000000000000000")  # fmt: skip
    assert (package_copy / MANIFEST_FILE).read_bytes() == before


def test_calibrate_with_the_learned_criterion_trains_a_gate_per_exit_and_inspect_says_so(
    package_copy: Path, digits: LabelledData, cli: Runner, tmp_path: Path
) -> None:
    digits.save_npz(tmp_path / "val.npz")
    out = _ok(cli("calibrate", "pkg", "--data", "val.npz", "--criterion", "learned", "--max-drop", "0.03",
                  "--plot", "out.png"))  # fmt: skip
    trained = round(0.3 * len(digits)) // 2  # half of Learn-then-Test's ordering share (gates.gate_share)
    assert f"learned (gate of {trained} samples, numpy)" in out  # exported with max_prob: no gate in its graphs
    manifest = _manifest(package_copy)
    assert [spec.criterion for spec in manifest.exits] == ["learned", "learned", "max_prob"]
    assert all(spec.gate is not None and spec.gate.samples == trained for spec in manifest.exits[:-1])
    record = manifest.calibration
    assert record is not None
    assert record.criterion == "learned"
    # the thresholds were chosen on the samples the gates never saw; on all of them the engine
    # stays near the budget (the gates' own samples score a little better than unseen ones)
    engine = Engine(package_copy, cache_dir=None)
    x, y = prepare_dataset(digits, manifest)
    accuracy, exits = _engine_accuracy(engine, x, y)
    assert accuracy >= record.final_accuracy - 0.04
    assert exits[:-1].sum() > 0
    assert f"learned (gate of {trained} samples, numpy)" in _ok(cli("inspect", "pkg"))
