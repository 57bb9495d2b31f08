"""The launcher: the `vre` command that runs the platform on one machine (`up`, the supervisor,
first-start setup, `serve`, `status`, `migrate`). It sits above every service and the core."""
