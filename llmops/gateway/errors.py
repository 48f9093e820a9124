"""One error type for the serving layer and one helper that turns anything into OpenAI's error shape.

Serving logic raises `GatewayError` (or lets an `LlmopsError` through); the routes turn it into a
JSON body `{"error": {"message", "type", "param", "code"}}` with the HTTP status. A client's mistake
is always a 4xx; only a bug in llmops is a 500, whose body says "internal error" and the request id
to look up in the gateway's log, never the exception's text.
"""

from __future__ import annotations

from typing import Any, Optional

from llmops.errors import ConfigError, LlmopsError, MissingExtraError, NotFoundError, PromptRenderError

__all__ = ["GatewayError", "error_body", "from_exception", "from_validation_errors", "internal_error"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    408: "timeout_error",
    403: "permission_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class GatewayError(Exception):
    """An error answered to the client with `status` (a 4xx for the client's mistakes)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body in OpenAI's error shape."""
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> dict[str, Any]:
    """`{"error": {...}}` for an HTTP status."""
    kind = _TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "internal_server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_exception(error: BaseException, param: Optional[str] = None) -> GatewayError:
    """Map an exception to the GatewayError the client sees.

    `param` names the request field the failing value came from (`model`, `prompt`).
    """
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, PromptRenderError):
        return GatewayError(400, str(error), param="variables", code="invalid_prompt_variables")
    if isinstance(error, NotFoundError):
        code = "model_not_found" if param == "model" else "prompt_not_found" if param == "prompt" else "not_found"
        return GatewayError(404, str(error), param=param, code=code)
    if isinstance(error, MissingExtraError):
        return GatewayError(503, str(error), code="missing_dependency")
    if isinstance(error, (LlmopsError, ConfigError)):
        return GatewayError(400, str(error), param=param, code="invalid_value")
    return internal_error()


def internal_error(request_id: str = "") -> GatewayError:
    """The 500 a client sees for a bug: no internal detail, only the id that finds it in the log."""
    where = f" (request id {request_id}; see the gateway log)" if request_id else ""
    return GatewayError(500, f"internal error{where}", code="internal_error")


# pydantic names the union member it tried in `loc`; clients want the field path only.
_TYPE_TAGS = {"str", "int", "float", "bool", "list[str]", "list[int]", "list[list[int]]", "list[_ContentPart]",
              "constrained-int", "constrained-float"}


def from_validation_errors(errors: list[dict[str, Any]]) -> GatewayError:
    """A 400 naming the first invalid field of a pydantic validation failure (and how many more)."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())
           if not str(part).startswith(("function-", "tagged-union")) and str(part) not in _TYPE_TAGS]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        message = f"'{param}' is a required property"
    else:
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return GatewayError(400, message, param=param, code="invalid_value" if first.get("type") != "missing" else "missing_required_parameter")
