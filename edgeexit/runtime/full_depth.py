"""Every exit's outputs for every sample, no early exit: what calibration chooses thresholds from.

Separate from the engine's walks because it serves a different reader (calibration, and
``edgeexit quantize``'s mixes of fp32 and int8 graphs) and must never stop early.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from edgeexit.criteria import Boundary, create_criterion
from edgeexit.manifest import ExitSpec
from edgeexit.runtime.backends import Segment
from edgeexit.runtime.results import Context
from edgeexit.runtime.walk import carrying, hand_on


def full_depth_outputs(
    segments: Sequence[Segment], exits: Sequence[ExitSpec], chunks: Iterable[tuple[np.ndarray, Context]]
) -> tuple[tuple[np.ndarray | None, ...], tuple[np.ndarray, ...]]:
    """Every exit's logits and every boundary's similarity to the one before, for every sample of
    ``chunks`` (input, context), with no early exit: what calibration reads. Any list of segments
    will do: an engine's, or ``edgeexit.compile.quantize``'s mixes of fp32 and int8 graphs."""
    logits: list[list[np.ndarray]] = [[] for _ in segments]
    similarity: list[list[np.ndarray]] = [[] for _ in segments]
    similar = create_criterion("similarity")
    flags = carrying(segments)
    for current, context in chunks:
        previous = None
        mask = context.get("attention_mask") if context else None
        for k, segment in enumerate(segments):
            outputs = segment.run(current, context)
            if flags[k]:
                context = hand_on(context, segment.spec, outputs, segments[k - 1].spec if k > 0 else None)
            name = exits[k].logits
            if name is not None:
                logits[k].append(outputs[name])
            hidden = outputs.get(segment.spec.hidden) if segment.spec.hidden else None
            if hidden is not None:
                similarity[k].append(similar.score(Boundary(None, hidden, previous, mask=mask)))
                previous = current = hidden
            else:
                similarity[k].append(np.zeros(len(current), np.float32))
    return (
        tuple(np.concatenate(parts) if parts else None for parts in logits),
        tuple(np.concatenate(parts) for parts in similarity),
    )
