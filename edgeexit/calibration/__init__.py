"""Calibration: choose each exit's threshold and temperature on labelled data (numpy only).

Works from one full-depth pass (``Engine.run_full``): fit per-exit temperatures, score every exit
with the runtime's own criteria, replay early exit for candidate thresholds, and keep the cheapest
setting whose accuracy stays within ``max_drop`` of the final exit. matplotlib is only imported by
``plot_pareto``.
"""

from edgeexit.calibration.calibrate import (
    calibrate_manifest,
    check_labels,
    digest_data,
    manifest_outcome,
    manifest_scores,
    pareto_for,
)
from edgeexit.calibration.gates import GateTraining, fit_gate
from edgeexit.calibration.plot import plot_pareto
from edgeexit.calibration.scores import exit_scores
from edgeexit.calibration.temperature import fit_temperature
from edgeexit.calibration.thresholds import (
    NEVER,
    Choice,
    Outcome,
    choose_for_budget,
    choose_thresholds,
    exit_index,
    finite_threshold,
    pareto_curve,
    simulate,
)

__all__ = [
    "NEVER",
    "Choice",
    "GateTraining",
    "Outcome",
    "calibrate_manifest",
    "check_labels",
    "choose_for_budget",
    "choose_thresholds",
    "digest_data",
    "exit_index",
    "exit_scores",
    "finite_threshold",
    "fit_gate",
    "fit_temperature",
    "manifest_outcome",
    "manifest_scores",
    "pareto_curve",
    "pareto_for",
    "plot_pareto",
    "simulate",
]
