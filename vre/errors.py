"""The one HTTP error model of every service: {"error": {"code", "message", "field"}} with
stable codes; client faults are 4xx, only our own bugs are 500."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

# Stable codes for werkzeug's own exceptions (routing, body size, methods).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


class ApiError(Exception):
    """An error a handler raises on purpose; rendered as the platform's JSON error body."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, field: str | None = None,
        status: int | None = None, details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.field = field
        self.status = status or self.status
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "field": self.field}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unprocessable(ApiError):
    status, code = 422, "validation_error"


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"


def error_response(err: ApiError) -> Response:
    response = jsonify(err.body())
    response.status_code = err.status
    if err.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="vre"'
    return response


def wants_json() -> bool:
    """API routes, and clients that ask for JSON, get JSON errors; browsers get pages."""
    if request.path.startswith(("/api/", "/.well-known/")) or \
            request.path in ("/healthz", "/readyz", "/metrics"):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > \
        request.accept_mimetypes["text/html"]


def register_error_handlers(app: Flask, html_renderer: Any = None) -> None:
    """Map every exception to the one error model; html_renderer draws pages for browsers."""

    def render(err: ApiError) -> Any:
        if html_renderer is not None and not wants_json():
            return html_renderer(err)
        return error_response(err)

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Any:
        return render(err)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            message = f"request body larger than {app.config.get('MAX_CONTENT_LENGTH')} bytes"
        err = ApiError(message, code=code, status=status)
        response = render(err)
        if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
            response = app.make_response(response)
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _bug(exc: Exception) -> Any:
        log.exception("unhandled error", extra={"event": "unhandled_error"})
        return render(ApiError("internal error; see the service log with this request id",
                               code="internal_error", status=500))
