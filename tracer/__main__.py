"""`python -m tracer` is the `vre-trace` command."""

from tracer.cli import main

raise SystemExit(main())
