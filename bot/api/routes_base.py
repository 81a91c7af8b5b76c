"""What every route module shares: the route table entry, the handlers' context,
parsing of bodies, query strings and path parameters, and JSON responses.

A :class:`Route` is declared once and used twice: to register the aiohttp
handler and to describe the route in ``/v1/openapi.json`` (:mod:`bot.api.openapi`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from bot.api.schemas import Index, Key, RuleId
from bot.approvals import ApprovalManager
from bot.governance import Governance
from bot.pricing import Pricer
from storage.errors import Forbidden, InvalidArgument, TapgateError
from storage.records import Approval
from storage.store import Store

log = logging.getLogger("tapgate.api")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"


class BadRequest(TapgateError):
    """The body is not JSON, or not the JSON shape the route takes (400)."""

    code = "bad_request"


class PayloadTooLarge(TapgateError):
    """The body or an approval's payload is over its limit (413)."""

    code = "payload_too_large"


class Invalid(InvalidArgument):
    """A request that parsed but failed validation (422); ``details`` are pydantic's errors."""

    def __init__(self, message: str, details: list[dict[str, Any]]):
        self.details = details
        super().__init__(message)


@dataclass(frozen=True)
class Route:
    """One route of the API, as registered and as documented."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    status: int = 200
    response: Any = None  # a model or type for the success body
    body: Any = None  # a model or type for the request body (None = no body)
    body_required: bool = True
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()  # error statuses this route can answer, besides the common ones
    description: str = ""


# Path parameters, by name: validated by handlers, documented by the OpenAPI builder.
PATH_PARAMS: dict[str, Any] = {"id": Key, "index": Index, "namespace": Key, "key": Key,
                               "name": Key, "rule_id": RuleId}
_PATH_ADAPTERS = {name: TypeAdapter(tp) for name, tp in PATH_PARAMS.items()}


class Api:
    """What the handlers work with: the Store, the ApprovalManager, Governance, the Pricer.

    It also tracks the open long-polls, so stopping the server answers them
    at once with the request's current state instead of holding the stop.
    """

    def __init__(self, store: Store, manager: ApprovalManager, pricer: Pricer,
                 database: str, version: str, governance: Governance):
        self.store = store
        self.manager = manager
        self.governance = governance
        self.pricer = pricer
        self.database = database
        self.version = version
        self._stopping: asyncio.Future[None] | None = None

    async def long_poll(self, approval_id: str, wait: float) -> Approval:
        """The request once final, or after ``wait`` seconds, or when the server stops."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
        if self._stopping.done():
            return await self.manager.get(approval_id)
        task = asyncio.ensure_future(self.manager.wait(approval_id, wait))
        try:
            # If the client goes away, aiohttp cancels this handler: the finally
            # below then cancels the wait, which releases the manager's waiter.
            await asyncio.wait((task, self._stopping), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
        finally:
            if not task.done():
                task.cancel()
        await asyncio.wait((task,))  # let the wait release its waiter first
        return await self.manager.get(approval_id)

    def stop_polls(self) -> None:
        """Answer every open long-poll now (the server is stopping)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
        if not self._stopping.done():
            self._stopping.set_result(None)


API = web.AppKey("tapgate_api", Api)


def api(request: web.Request) -> Api:
    return request.app[API]


@dataclass(frozen=True)
class Caller:
    """Who is asking: the peer uid (SO_PEERCRED) and whether it is an admin uid."""

    uid: int | None
    admin: bool

    def require_admin(self, operation: str) -> None:
        """Forbidden (403 naming ``operation``) unless the caller is an admin."""
        if not self.admin:
            raise Forbidden(f"uid {self.uid} is an agent: {operation} needs an admin uid "
                            "(TAPGATE_SOCKET_ADMIN_UIDS)")


CALLER = web.RequestKey("tapgate_caller", Caller)
_ADMIN = Caller(None, True)


def caller(request: web.Request) -> Caller:
    """The caller the socket guard identified (an admin when the app runs without it)."""
    return request.get(CALLER, _ADMIN)


async def finish(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end even if the client goes away and the handler is cancelled.

    A change the manager commits must still be announced (Telegram told,
    waiters woken); only the answer to the departed client is dropped.
    """
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_forget)
        raise


def _forget(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("change finished after the client left: %r", task.exception())


# --- parsing ---------------------------------------------------------------------------------


def invalid(exc: ValidationError, where: str) -> TapgateError:
    """Translate pydantic's errors: malformed JSON → 400, anything else → 422 with details."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    for error in errors:
        if error["type"] == "json_invalid":
            return BadRequest(f"malformed JSON: {error['msg'].removeprefix('Invalid JSON: ')}")
    if where == "body" and len(errors) == 1 and errors[0]["loc"] == () and errors[0]["type"] in (
            "model_type", "model_attributes_type", "dict_type"):
        return BadRequest("the request body must be a JSON object")
    details = [{"loc": [where, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]
    first = details[0]
    place = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return Invalid(f"invalid {place}: {first['msg']}{more}", details)


async def read_body(request: web.Request) -> bytes:
    """The raw body (aiohttp refuses one over ``client_max_size`` with 413)."""
    return await request.read()


def parse_json(validator: type[BaseModel] | TypeAdapter, raw: bytes | str) -> Any:
    try:
        if isinstance(validator, TypeAdapter):
            return validator.validate_json(raw)
        return validator.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc, "body") from None


async def body(request: web.Request, model: type[BaseModel], optional: bool = False) -> Any:
    """The body validated by ``model``; an empty body is ``{}`` when ``optional``."""
    raw = await read_body(request)
    if optional and not raw.strip():
        raw = b"{}"
    return parse_json(model, raw)


def query(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise invalid(exc, "query") from None


def path(request: web.Request, name: str) -> Any:
    """A path parameter, validated by its type in :data:`PATH_PARAMS`."""
    try:
        return _PATH_ADAPTERS[name].validate_python(request.match_info[name])
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        details = [{"loc": ["path", name], "msg": e["msg"], "type": e["type"]} for e in errors]
        raise Invalid(f"invalid path.{name}: {details[0]['msg']}", details) from None


# --- responses -------------------------------------------------------------------------------


def respond(model: BaseModel, status: int = 200) -> web.Response:
    """A record (or any model) as the JSON body."""
    return web.Response(body=model.model_dump_json().encode(), status=status, content_type=JSON)


@dataclass
class ItemsOf:
    """Serializes ``{"items": [...]}`` for one record type in one pass."""

    record: Any
    adapter: TypeAdapter = field(init=False)

    def __post_init__(self) -> None:
        self.adapter = TypeAdapter(list[self.record])

    def respond(self, items: list[Any], status: int = 200) -> web.Response:
        return web.Response(body=b'{"items":' + self.adapter.dump_json(items) + b"}",
                            status=status, content_type=JSON)


def error_response(status: int, code: str, message: str,
                   details: list[Any] | tuple[Any, ...] = (),
                   headers: dict[str, str] | None = None) -> web.Response:
    """The one error shape: ``{"error": {"code", "message", "details"}}`` (plus
    ``headers``, e.g. ``Retry-After`` on a 503)."""
    body_ = {"error": {"code": code, "message": message, "details": list(details)}}
    return web.Response(body=json.dumps(body_, default=str).encode(), status=status,
                        content_type=JSON, headers=headers)
