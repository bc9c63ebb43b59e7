"""Text sets by name: the registry the CLI's ``--data`` looks up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgeexit.data import list_text_sets, load_text_set
from edgeexit.data.text_sets import text_set_name
from edgeexit.errors import UnknownNameError


def test_names_are_read_as_typed_and_unknown_ones_list_the_known() -> None:
    assert list_text_sets() == ["rotten-tomatoes", "tweets"]
    assert text_set_name(" Rotten-Tomatoes ") == text_set_name("builtin:rotten-tomatoes") == "rotten-tomatoes"
    assert text_set_name("builtin:tweets") == "tweets"
    assert text_set_name("digits") is None
    with pytest.raises(UnknownNameError, match="rotten-tomatoes, tweets"):
        load_text_set("imdb")


def test_cli_takes_rotten_tomatoes_as_a_text_set(edgeexit_cli: list[str], package_copy: Path) -> None:
    # The name reaches the text path (which needs the package's tokenizer), not the image sets'
    # "cannot load data set" (an image package is refused before the snippets are read).
    done = subprocess.run(
        [*edgeexit_cli, "calibrate", str(package_copy), "--data", "rotten-tomatoes", "--split", "validation"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "tokenizer" in done.stderr
    assert "cannot load data set" not in done.stderr
