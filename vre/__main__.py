"""`python -m vre` is the `vre` command."""

from vre.cli import main

raise SystemExit(main())
