"""API errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

Every refusal is an `ApiError` raised anywhere in the API layer; the app's exception handler turns it into the JSON
response (and a stream that already started ends with it as its last event)."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.responses import JSONResponse

from cobra_app.api.schemas import ErrorBody, ErrorResponse

INVALID = "invalid_request_error"


class ApiError(Exception):
    """An HTTP error for an API client. `message` is plain words saying what is wrong and what to do."""

    def __init__(self, status: int, message: str, *, type: str = INVALID, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _param(loc: tuple) -> str:
    """pydantic's error location -> OpenAI's param path: ('messages', 0, 'content', 'list[...]', 1) ->
    'messages[0].content[1]' (the union branch names pydantic inserts are dropped)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" not in part and part not in ("str", "int", "float", "bool", "none", "list", "dict"):
            path += f".{part}" if path else part
    return path


def from_validation_error(error: ValidationError) -> ApiError:
    """The most specific problem pydantic found in a request body -> a 400 naming the parameter."""
    problems = error.errors(include_url=False)
    if any(p["type"] == "json_invalid" for p in problems):
        return bad_request("We could not parse the JSON body of your request: " + problems[0]["msg"] + ". Send a "
                           "JSON object (and no NaN or Infinity).", code="invalid_json")
    unknown = [p for p in problems if p["type"] == "extra_forbidden"]
    if unknown:
        name = _param(unknown[0]["loc"])
        return bad_request(f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
    problem = max(problems, key=lambda p: len(p["loc"]))  # the deepest location says most (e.g. a content part)
    name = _param(problem["loc"])
    if problem["type"] == "missing":
        return bad_request(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if problem["type"] == "union_tag_invalid":
        return bad_request(f"Invalid value for '{name}.type': {problem['ctx']['tag']!r} is not supported; Cobra reads "
                           f"content parts of type {problem['ctx']['expected_tags']}.", param=name,
                           code="invalid_value")
    if problem["type"] == "model_type" and not problem["loc"]:
        return bad_request("The request body must be a JSON object.", code="invalid_json")
    return bad_request(f"Invalid value for '{name}': {problem['msg']}.", param=name or None, code="invalid_value")
