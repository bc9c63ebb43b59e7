"""How the benchmark scripts end: a refused input is one line saying what was wrong, not a traceback.

The library's errors (``edgeexit.errors``) already say what failed, what was expected and how to
fix it; a traceback under them only hides that line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


def run(main: Callable[[], int | None]) -> NoReturn:
    """``sys.exit(main())``, with an ``EdgeExitError`` printed as ``error: ...`` and exit status 2."""
    from edgeexit.errors import EdgeExitError

    try:
        code = main()
    except EdgeExitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
