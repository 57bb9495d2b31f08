"""The registry of the platform's services, and the credentials the portal derives for them."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    """One of the platform's web services: its package, migrations and required settings."""

    name: str
    package: str
    title: str
    requires: tuple[str, ...]

    @property
    def migrations(self) -> str:
        return f"{self.package}:migrations"

    @property
    def factory(self) -> str:
        """Where its app factory is, as a server names it ('portal.app:create_app'): the
        package itself stays light, for the clients that ship into workloads."""
        return f"{self.package}.app:create_app"


SERVICES: tuple[Service, ...] = (
    Service("portal", "portal", "VRE portal", ("secret_key",)),
    Service("dataset_service", "dataset_service", "VRE dataset service", ("service_secret",)),
    Service("tracer", "tracer", "VRE tracer", ("service_secret",)),
)


def service(name: str) -> Service:
    for svc in SERVICES:
        if svc.name == name:
            return svc
    raise KeyError(f"unknown service {name!r}; known: {', '.join(s.name for s in SERVICES)}")


def derive_service_secret(root_secret: str, service_name: str) -> str:
    """The client secret of a service, derived from the portal's root secret (one-machine mode)."""
    mac = hmac.new(root_secret.encode(), f"service-client:{service_name}".encode(), hashlib.sha256)
    return mac.hexdigest()
