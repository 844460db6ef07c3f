"""Errors, named by who can recover from them, and their one mapping to HTTP.

Exception tree::

    InferenceOptimizerError
    ├── RequestError                   the caller can fix it (4xx)
    │   ├── InvalidRequestError        400 invalid_request_error
    │   │   ├── UnsupportedParameterError   400, code unsupported_parameter
    │   │   └── ContextLengthExceededError  400, code context_length_exceeded
    │   ├── AuthenticationError        401 authentication_error (no key, or an unknown one)
    │   ├── PermissionDeniedError      403 permission_error (a tenant's key on an admin endpoint)
    │   ├── ModelNotFoundError         404, code model_not_found
    │   ├── RequestTooLargeError       413, code request_too_large
    │   ├── NotFoundError              404, code not_found (no such endpoint)
    │   └── MethodNotAllowedError      405, code method_not_allowed
    └── ServiceError                   retry later; nothing the caller sent was wrong (5xx, 429)
        ├── OverloadedError            429 (queue full) or 503 (waited too long), with Retry-After
        ├── RateLimitError             429 rate_limit_exceeded: a tenant's requests or tokens, Retry-After
        │   └── QuotaExceededError     429 insufficient_quota: a tenant's budget, Retry-After
        ├── EngineUnavailableError     503 service_unavailable
        └── EngineTimeoutError         504 timeout

`to_openai_error()` is the only place an exception becomes a status code and an
OpenAI-style body: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any


class InferenceOptimizerError(Exception):
    """Base of every error this package raises on purpose."""

    status_code = 500
    type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        # The route trace so far (set by the router), returned with the error.
        self.route: Any = None


class RequestError(InferenceOptimizerError):
    """The request itself is wrong; sending it again unchanged will fail again."""

    status_code = 400
    type = "invalid_request_error"


class InvalidRequestError(RequestError):
    """A field is missing, malformed or out of bounds."""


class UnsupportedParameterError(InvalidRequestError):
    """A valid OpenAI parameter this service does not implement."""

    code = "unsupported_parameter"


class ContextLengthExceededError(InvalidRequestError):
    """Prompt plus max_tokens do not fit the model's context window."""

    code = "context_length_exceeded"


class AuthenticationError(RequestError):
    """Missing or wrong key for a guarded endpoint."""

    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(RequestError):
    """A valid key that may not use this endpoint."""

    status_code = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotFoundError(RequestError):
    """The request names a model this service does not serve."""

    status_code = 404
    code = "model_not_found"


class ServiceError(InferenceOptimizerError):
    """A backend failed; the same request may succeed later."""

    status_code = 503
    type = "service_unavailable"


class OverloadedError(ServiceError):
    """More work is waiting than the service takes on: come back after `retry_after_s`."""

    status_code = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        if status_code is not None:
            self.status_code = status_code


class RateLimitError(ServiceError):
    """A tenant sent more requests or tokens than its limits allow: come back after `retry_after_s`."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class QuotaExceededError(RateLimitError):
    """A tenant spent its budget for the current window."""

    type = "insufficient_quota"
    code = "insufficient_quota"


class EngineUnavailableError(ServiceError):
    """An engine is down, restarting or answered with an internal error."""


class EngineTimeoutError(ServiceError):
    """An engine did not answer within its configured timeout."""

    status_code = 504
    type = "timeout"


class RequestTooLargeError(RequestError):
    """The request body is larger than the service accepts."""

    status_code = 413
    code = "request_too_large"


class NotFoundError(RequestError):
    """No such endpoint."""

    status_code = 404
    code = "not_found"


class MethodNotAllowedError(RequestError):
    """The endpoint exists, not with this method."""

    status_code = 405
    code = "method_not_allowed"


def from_http_status(status: int, detail: str) -> InferenceOptimizerError:
    """The error of ours that an HTTP framework's own status (404, 405, 413, 422...) stands for."""
    if status == 404:
        return NotFoundError(detail or "not found")
    if status == 405:
        return MethodNotAllowedError(detail or "method not allowed")
    if 400 <= status < 500:
        err = InvalidRequestError(detail or "bad request")
        err.status_code = status
        return err
    return EngineUnavailableError(detail or "service unavailable")


def to_openai_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """Map any exception to `(status, OpenAI error body)`; unknown ones become a 500."""
    if isinstance(exc, InferenceOptimizerError):
        status, body = exc.status_code, {
            "message": exc.message,
            "type": exc.type,
            "param": exc.param,
            "code": exc.code,
        }
        route = exc.route.model_dump() if hasattr(exc.route, "model_dump") else exc.route
        payload: dict[str, Any] = {"error": body}
        if route is not None:
            payload["route"] = route
        return status, payload
    return 500, {
        "error": {
            "message": f"internal error: {type(exc).__name__}",
            "type": "internal_error",
            "param": None,
            "code": None,
        }
    }
