"""Choosing the next token from the head's logits: greedy, or sampled with a seed."""

from __future__ import annotations

import numpy as np

from edgeexit.errors import UsageError


class Sampler:
    """``temperature`` 0: the most probable token (ties to the lowest id, as ``argmax``);
    above 0: a draw from the tempered distribution cut to the ``top_k`` most probable tokens
    (0: all) and to the smallest set whose probability reaches ``top_p``, from a generator seeded
    with ``seed`` (the same seed, the same draws)."""

    def __init__(
        self, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None
    ) -> None:
        if not temperature >= 0:
            raise UsageError(f"temperature is {temperature}; expected 0 (greedy) or above")
        if top_k < 0:
            raise UsageError(f"top_k is {top_k}; expected 0 (no cut) or a positive count")
        if not 0 < top_p <= 1:
            raise UsageError(f"top_p is {top_p}; expected a probability in (0, 1]")
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def pick(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        return int(self.rng.choice(len(logits), p=self.distribution(logits)))

    def distribution(self, logits: np.ndarray) -> np.ndarray:
        """The probabilities ``pick`` draws from (float64, summing to 1)."""
        scaled = logits.astype(np.float64) / max(self.temperature, 1e-6)
        if self.top_k and self.top_k < len(scaled):
            cut = np.partition(scaled, -self.top_k)[-self.top_k]
            scaled = np.where(scaled >= cut, scaled, -np.inf)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if self.top_p < 1:
            order = np.argsort(-probs, kind="stable")
            keep = np.cumsum(probs[order]) - probs[order] < self.top_p  # the smallest prefix reaching top_p
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return probs
