"""The OpenAPI 3.1 document of the socket API, built from the route table and the pydantic models.

Nothing is written by hand: every path, parameter, body and response comes
from the same :class:`~bot.api.routes_base.Route` entries that register the
handlers, so the document and the server cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import TypeAdapter

from bot.api.routes_base import PATH_PARAMS, Route
from bot.api.schemas import ErrorResponse

REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": REF.format(model="ErrorResponse")}
ERROR_TEXT = {
    400: "malformed JSON, or a body that is not the JSON shape the route takes (bad_request)",
    402: "the run is halted: budget exceeded or cancelled (budget_exceeded; details carry "
         "the halt reason, budgets and usage)",
    403: "the peer's uid is not allowed on this socket, or the run's policy forbids it "
         "(forbidden)",
    404: "no such record or route (not_found)",
    405: "the route does not take this method (method_not_allowed)",
    409: "the request contradicts what is stored (conflict)",
    413: "the body is over 1 MiB, or an approval's payload over 64 KiB (payload_too_large)",
    422: "a field, query or path parameter failed validation (validation_error; details carry "
         "loc, msg and type of each error)",
    500: "an unexpected server error (internal; logged, never a traceback)",
    503: "the database is unavailable (storage_error)",
}
PARAM = re.compile(r"{(\w+)}")


def _errors(route: Route) -> list[int]:
    statuses = set(route.errors) | {403, 500, 503}
    if route.body is not None:
        statuses |= {400, 413, 422}
    if route.query is not None or PARAM.search(route.path):
        statuses.add(422)
    return sorted(statuses)


def build_openapi(routes: list[Route], version: str) -> dict[str, Any]:
    """The document describing ``routes`` (and every schema they use)."""
    inputs: list[tuple[Any, Any, TypeAdapter]] = [
        ("error", "serialization", TypeAdapter(ErrorResponse))]
    for i, route in enumerate(routes):
        if route.body is not None:
            inputs.append(((i, "body"), "validation", TypeAdapter(route.body)))
        if route.query is not None:
            inputs.append(((i, "query"), "validation", TypeAdapter(route.query)))
        if route.response is not None:
            inputs.append(((i, "response"), "serialization", TypeAdapter(route.response)))
    schemas, defs = TypeAdapter.json_schemas(inputs, ref_template=REF)
    components = defs.get("$defs", {})

    paths: dict[str, dict[str, Any]] = {}
    for i, route in enumerate(routes):
        op: dict[str, Any] = {
            "operationId": route.handler.__name__,
            "summary": route.summary,
            "tags": [route.tag],
        }
        if route.description:
            op["description"] = route.description
        params = [_path_param(name) for name in PARAM.findall(route.path)]
        if route.query is not None:
            params.extend(_query_params(schemas[((i, "query"), "validation")], components))
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": route.body_required,
                "content": {"application/json": {
                    "schema": schemas[((i, "body"), "validation")]}},
            }
        ok: dict[str, Any] = {"description": route.summary}
        if route.response is not None:
            ok["content"] = {"application/json": {
                "schema": schemas[((i, "response"), "serialization")]}}
        responses: dict[str, Any] = {str(route.status): ok}
        if route.status == 201 and route.path == "/v1/approvals":
            responses["200"] = {"description": "the existing request (repeated idempotency "
                                               "key)", "content": ok["content"]}
        for status in _errors(route):
            responses[str(status)] = {"description": ERROR_TEXT[status], "content": {
                "application/json": {"schema": ERROR_REF}}}
        op["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tapgate socket API",
            "version": version,
            "description": "HTTP/1.1 + JSON over the Unix socket. Errors are always "
                           '{"error": {"code", "message", "details"}}; times are RFC 3339 '
                           "UTC; every list answers {\"items\": [...]}.",
        },
        "servers": [{"url": "http://tapgate"}],
        "paths": paths,
        "components": {"schemas": components},
    }


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": TypeAdapter(PATH_PARAMS[name]).json_schema()}


def _query_params(ref: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    model = components[ref["$ref"].rsplit("/", 1)[1]]
    required = set(model.get("required", ()))
    params = []
    for name, schema in model.get("properties", {}).items():
        param = {"name": name, "in": "query", "required": name in required,
                 "schema": {k: v for k, v in schema.items() if k != "description"}}
        if "description" in schema:
            param["description"] = schema["description"]
        params.append(param)
    return params
