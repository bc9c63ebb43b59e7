"""Edge devices import edgeexit.data without torch or the optional data libraries installed."""

from __future__ import annotations

import subprocess
import sys


def test_import_pulls_in_no_heavy_or_optional_package() -> None:
    code = (
        "import sys, edgeexit.data; "
        "print(sorted(m for m in ('torch', 'PIL', 'sklearn', 'mlxtend') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
