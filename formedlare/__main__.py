"""``python -m formedlare``: the same as the ``formedlare`` command."""

from formedlare.cli import main

main()
