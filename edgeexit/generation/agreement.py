"""How closely one way of decoding follows another: the figures a weight variant is recorded with.

Teacher-forced agreement is the share of positions where the candidate's most probable next token
is the reference's greedy choice, with the reference's own continuation as context (one prefill
pass over prompt + continuation): unlike comparing two free-running continuations, one early
disagreement does not make every later token count as different.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgeexit.generation.engine import DecoderEngine


def agreement(reference: DecoderEngine, candidate: DecoderEngine, prompts: Sequence[Sequence[int]],
              tokens: int = 32) -> dict[str, Any]:  # fmt: skip
    """``candidate`` against ``reference`` on greedy continuations of ``prompts`` (token ids) of
    ``tokens`` tokens: teacher-forced top-1 agreement, identical free-running continuations, and
    the largest |logit difference| over the teacher-forced positions."""
    from edgeexit.generation.cache import KVCache

    agreed = positions = identical = 0
    worst = 0.0
    for ids in prompts:
        ids = [int(t) for t in ids]
        ours = reference.generate(ids, tokens, stop=()).tokens
        theirs = candidate.generate(ids, tokens, stop=()).tokens
        identical += ours == theirs
        sequence = np.asarray([[*ids, *ours[:-1]]], dtype=np.int64)
        logits = []
        for engine in (reference, candidate):
            manifest = engine.manifest
            cache = KVCache(manifest.shape, [s.layers for s in manifest.segments], batch=1,
                            capacity=sequence.shape[1])  # fmt: skip
            logits.append(engine.forward(sequence, cache, every_position=True)[0, len(ids) - 1 :])
        agreed += int(np.sum(np.argmax(logits[1], axis=-1) == np.asarray(ours)))
        positions += len(ours)
        worst = max(worst, float(np.max(np.abs(logits[0] - logits[1]))))
    return {
        "prompts": len(prompts),
        "tokens": tokens,
        "teacher_forced_agreement": agreed / positions if positions else 1.0,
        "identical_continuations": identical,
        "max_abs_logit_diff": worst,
    }


def judge(reference: DecoderEngine, prompt: Sequence[int], generated: Sequence[int]) -> tuple[int, float, int]:
    """The full model's view of a continuation: at how many of its tokens the full model's greedy
    choice (given the same text before it) is that token, the summed negative log-likelihood the
    full model gives the continuation, and its length. Perplexity is ``exp(nll / length)``."""
    from edgeexit.generation.cache import KVCache

    if not generated:
        return 0, 0.0, 0
    sequence = np.asarray([[*prompt, *generated[:-1]]], dtype=np.int64)
    manifest = reference.manifest
    cache = KVCache(manifest.shape, [s.layers for s in manifest.segments], batch=1, capacity=sequence.shape[1])
    logits = reference.forward(sequence, cache, every_position=True)[0, len(prompt) - 1 :].astype(np.float64)
    target = np.asarray(generated)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted[np.arange(len(target)), target] - np.log(np.exp(shifted).sum(axis=-1))
    agreed = int(np.sum(np.argmax(logits, axis=-1) == target))
    return agreed, float(-log_probs.sum()), len(target)
