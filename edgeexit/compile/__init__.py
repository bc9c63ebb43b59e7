"""Workstation side: build, train and export multi-exit models. The only layer importing torch."""

from edgeexit.compile.adapters import attach_exits, list_adapters
from edgeexit.compile.heads import create_head, list_heads
from edgeexit.compile.model import MultiExitModel

__all__ = ["MultiExitModel", "attach_exits", "create_head", "list_adapters", "list_heads"]
