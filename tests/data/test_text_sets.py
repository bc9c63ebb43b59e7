"""Text sets by name: the registry the CLI's ``--data`` looks up, and a real calibrate run on the
Rotten Tomatoes snippets through it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgeexit.data import list_text_sets, load_text_set
from edgeexit.data.text_sets import text_set_name
from edgeexit.errors import DataError, UnknownNameError
from edgeexit.package import open_package


def test_names_are_read_as_typed_and_unknown_ones_list_the_known() -> None:
    assert list_text_sets() == ["rotten-tomatoes", "tweets"]
    assert text_set_name(" Rotten-Tomatoes ") == text_set_name("builtin:rotten-tomatoes") == "rotten-tomatoes"
    assert text_set_name("builtin:tweets") == "tweets"
    assert text_set_name("digits") is None
    with pytest.raises(UnknownNameError, match="rotten-tomatoes, tweets"):
        load_text_set("imdb")


@pytest.fixture(scope="module")
def review_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's tiny masked encoder with two classes and all-MiniLM's tokenizer (its ids fit the
    vocabulary): a real text package in seconds. Untrained, so only the plumbing is tested."""
    torch = pytest.importorskip("torch")
    from edgeexit.compile import export
    from edgeexit.compile.zoo import tiny_text, tiny_text_tokens
    from edgeexit.data.rotten_tomatoes import REVIEW_LABELS, rotten_tomatoes_csv_path
    from edgeexit.errors import ModelError

    try:
        rotten_tomatoes_csv_path()
        from edgeexit.compile.text_models import minilm_l6_tokenizer

        tokenizer = minilm_l6_tokenizer()
    except (DataError, ModelError) as err:
        pytest.skip(str(err))
    torch.manual_seed(0)
    model = tiny_text(num_classes=2, vocab=30522, dim=8)
    out = tmp_path_factory.mktemp("reviews") / "pkg"
    export(model, (1, 12), out, sample=tiny_text_tokens(4, 12), labels=list(REVIEW_LABELS), tokenizer=tokenizer)
    return out


def test_cli_calibrates_a_text_package_on_the_rotten_tomatoes_snippets(
    review_package: Path, edgeexit_cli: list[str]
) -> None:
    done = subprocess.run(
        [*edgeexit_cli, "calibrate", str(review_package), "--data", "rotten-tomatoes", "--split", "validation",
         "--limit", "30", "--max-length", "32"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Rotten Tomatoes snippets" in done.stdout
    assert "30 samples" in done.stdout
    record = open_package(review_package).manifest.calibration
    assert record is not None
    assert record.samples == 30
