"""``python -m unipixel``: the command line (see :mod:`unipixel.cli`)."""
from .cli import main

raise SystemExit(main())
