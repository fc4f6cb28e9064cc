"""``python -m duroxide_trio``: the ``duroxide-trio`` command line."""

from .cli import main

main()
