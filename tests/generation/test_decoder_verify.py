"""`edgeexit verify` on a decoder package: the export's greedy continuations reproduced on this machine
by full depth and by speculation, token for token; a package whose record no longer matches is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeexit.errors import PackageError
from edgeexit.generation.verify import require_ok, verify_decoder_package


def test_the_export_records_its_greedy_continuations(tiny_decoder: Path) -> None:
    raw = json.loads((tiny_decoder / "manifest.json").read_text())
    rows = raw["reference"]["greedy"]
    assert rows
    assert all(len(row["continuation"]) == row["tokens"] and row["prompt_ids"] for row in rows)


def test_verify_reruns_every_mode_and_variant(tiny_with_draft: Path) -> None:
    report = verify_decoder_package(tiny_with_draft)
    names = {check.row for check in report.checks}
    assert {"full", "speculative", "speculative, int4 draft", "full int8", "full int4"} <= names
    assert all(check.identical for check in report.checks if check.required)
    assert report.ok
    require_ok(report, tiny_with_draft)


def test_verify_refuses_a_package_whose_text_changed(tiny_with_draft: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(tiny_with_draft, changed)
    manifest = changed / "manifest.json"
    raw = json.loads(manifest.read_text())
    row = raw["reference"]["greedy"][0]
    row["continuation"][-1] = (row["continuation"][-1] + 1) % 512  # what a different graph would have said
    manifest.write_text(json.dumps(raw))
    with pytest.raises(PackageError, match="differs from the one recorded at export"):
        require_ok(verify_decoder_package(changed), changed)
    done = subprocess.run([sys.executable, "-m", "edgeexit", "verify", str(changed)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode != 0
    assert "DIFFERS" in done.stdout
    assert "differs from the one recorded at export" in done.stdout + done.stderr


def test_verify_cli_passes_a_good_package(tiny_with_draft: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edgeexit", "verify", str(tiny_with_draft)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout
    assert "speculative" in done.stdout
