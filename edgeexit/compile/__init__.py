"""Workstation side: build, train and export multi-exit models. The only layer importing torch.

Usage: ``from edgeexit.compile import attach_exits, train, export``.
"""

from edgeexit.compile import zoo_graphs  # noqa: F401  (registers the generic adapter's zoo models)
from edgeexit.compile.adapters import attach_exits, list_adapters
from edgeexit.compile.checkpoint import load_checkpoint, save_checkpoint
from edgeexit.compile.export import export
from edgeexit.compile.heads import create_head, list_heads
from edgeexit.compile.model import MultiExitModel
from edgeexit.compile.training import evaluate, train
from edgeexit.compile.zoo import create_model, list_models, register_model

__all__ = [
    "MultiExitModel",
    "attach_exits",
    "create_head",
    "create_model",
    "evaluate",
    "export",
    "list_adapters",
    "list_heads",
    "list_models",
    "load_checkpoint",
    "register_model",
    "save_checkpoint",
    "train",
]
