"""``python -m edgeexit`` is the same as the ``edgeexit`` command."""

from edgeexit.cli import main

main()
