"""The platform core shared by every service: configuration, errors, tokens, database, web
plumbing and the one HTTP client base. It imports no service; the `vre` command that runs the
platform is the `launcher` package, above the services."""

__version__ = "0.1.0"
