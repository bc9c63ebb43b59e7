"""The toy profile every policy test uses: 3 segments, numbers chosen to be computed by hand."""

from __future__ import annotations

import pytest

from edgeexit.policy import DeviceCosts, RadioModel


@pytest.fixture
def toy() -> DeviceCosts:
    """Exits take half the samples at 0 and a quarter at 1; tails at boundaries 0 and 1.

    steps (segment + check): 11 ms / 0.11 J, 21 ms / 0.21 J, 31 ms / 0.31 J.
    """
    return DeviceCosts(
        segment_ms=(10.0, 20.0, 30.0),
        segment_j=(0.1, 0.2, 0.3),
        exit_prob=(0.5, 0.25, 0.25),
        encoded_bytes=(100_000, 25_000),
        radio=RadioModel(tx_w_per_mbps=0.1, tx_base_w=1.0, tail_j=0.5),
        idle_w=2.0,
        exit_check_ms=(1.0, 1.0, 1.0),
        exit_check_j=(0.01, 0.01, 0.01),
        server_ms=(5.0, 2.0),
    )
