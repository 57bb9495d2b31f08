"""`python -m launcher` is the `vre` command."""

from launcher.cli import main

raise SystemExit(main())
