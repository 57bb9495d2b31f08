"""The one HTTP client base for the platform's services: bearer tokens, timeouts, and the
JSON error model turned back into exceptions that carry status, stable code and details."""

from __future__ import annotations

from typing import Any, ClassVar

import requests

from vre.service_auth import TokenSource


class ServiceError(Exception):
    """A service refused or failed a request; carries its status, stable code and details."""

    service = "service"

    def __init__(self, status: int, code: str, message: str,
                 field: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{self.service}: {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details or {}


class ServiceUnavailable(ServiceError):
    """The service could not be reached or failed on its side (5xx): nothing was done."""


class ServiceClient:
    """Calls one service's `/api/v1`; subclasses name their own error classes."""

    error: ClassVar[type[ServiceError]] = ServiceError
    unavailable: ClassVar[type[ServiceError]] = ServiceUnavailable

    def __init__(self, base_url: str, tokens: TokenSource | None = None,
                 timeout: float = 10.0, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.timeout = timeout
        self.http = session or requests.Session()

    def _call(self, method: str, path: str, *, raw: bool = False, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if self.tokens is not None:
            headers["Authorization"] = f"Bearer {self.tokens.token()}"
        try:
            response = self.http.request(method, self.base_url + path, headers=headers,
                                         timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            raise self.unavailable(0, f"{self.error.service}_unavailable", str(exc)) from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = error["code"], error["message"]
                field, details = error.get("field"), error.get("details")
            except (ValueError, KeyError, TypeError):
                code, message, field, details = "http_error", response.text[:200], None, None
            cls = self.unavailable if response.status_code >= 500 else self.error
            raise cls(response.status_code, code, message, field, details)
        return response if raw else response.json()
