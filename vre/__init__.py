"""The platform core shared by every service: configuration, errors, tokens, database, web
plumbing, and the `vre` command that runs the platform on one machine."""

__version__ = "0.1.0"
