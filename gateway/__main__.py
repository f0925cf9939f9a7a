"""``python -m gateway`` is the ``tensorgate`` command."""

from gateway.cli import main

raise SystemExit(main())
