"""Routing: which chats a request is posted to.

A route is ``{agent glob, kind glob} → chat ids`` (``*`` any run of characters,
``?`` one character; both default to ``*``), and optionally the approvers who alone
may decide its requests in Telegram until they escalate (:mod:`storage.approvers`). Routes are tried in order and the
first match wins: the routes of the last policy file applied with a ``routes``
section (stored, :mod:`storage.routes`), then ``TAPGATE_ROUTES``; a request no
route matches goes to the approver chats (``TAPGATE_APPROVER_CHAT_IDS``).
Escalation adds the escalation chats later, as before (:mod:`storage.escalation`).

The :class:`Router` is on the submit path, so it answers from memory: the stored
routes are re-read at most every ``max_age`` seconds when asked, and at once
after this process stored new ones. Knows nothing of Telegram.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, NamedTuple

from pydantic import ValidationError

from storage.errors import StorageError
from storage.rule_records import Route

log = logging.getLogger(__name__)

EXAMPLE = '[{"agent": "deploy-*", "kind": "*", "chats": [-1001234567890]}]'
MAX_ROUTES = 1000
MEMO_MAX = 4096  # (agent, kind) pairs remembered between refreshes


# --- parsing ---------------------------------------------------------------------------


def parse_routes(value: object) -> list[Route]:
    """``TAPGATE_ROUTES``: JSON text (or an already decoded list) as routes. Empty or
    unset: none. ValueError with a sentence naming the route and the field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc}); expected a list such as "
                             f"{EXAMPLE}") from None
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a JSON list of routes, such as {EXAMPLE}")
    return route_list(value)


def route_list(items: Iterable[Any]) -> list[Route]:
    """Validate decoded routes (a policy file's ``routes`` list, say); ValueError naming
    the route (``route #2``, counting from 1) and the field."""
    items = list(items)
    if len(items) > MAX_ROUTES:
        raise ValueError(f"{len(items)} routes: at most {MAX_ROUTES}")
    routes = []
    for n, item in enumerate(items, 1):
        if isinstance(item, Route):
            routes.append(item)
            continue
        if not isinstance(item, dict):
            raise ValueError(f"route #{n}: must be a mapping of agent, kind and chats")
        try:
            routes.append(Route(**item))
        except ValidationError as exc:
            raise ValueError(f"route #{n}: {_explain(exc.errors()[0])}") from None
    return routes


def _explain(error: dict) -> str:
    field = str(error["loc"][0]) if error["loc"] else "?"
    if error["type"] == "extra_forbidden":
        return (f"field {field}: unknown field (a route has agent, kind, chats and "
                "approvers)")
    if field == "chats":
        if error["type"] == "value_error":
            return f"field chats: {error['msg'].removeprefix('Value error, ')}"
        return "field chats: must be a non-empty list of chat ids (integers, e.g. -1001234567890)"
    if field == "approvers":
        if error["type"] == "value_error":
            return f"field approvers: {error['msg'].removeprefix('Value error, ')}"
        return ("field approvers: must be a non-empty list of Telegram user ids (integers, "
                "e.g. 123456789), or absent for every allowed user")
    if field in ("agent", "kind"):
        return (f"field {field}: must be a non-empty glob of at most 200 characters "
                "(* and ? are wildcards)")
    return f"field {field}: {error['msg']}"


# --- matching --------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def glob_pattern(glob: str) -> re.Pattern | None:
    """``glob`` as a regular expression for ``fullmatch`` (None for ``*``: everything)."""
    if glob == "*":
        return None
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in glob), re.DOTALL)


def _covers(pattern: re.Pattern | None, text: str) -> bool:
    return pattern is None or pattern.fullmatch(text) is not None


def glob_matches(glob: str, text: str) -> bool:
    """True if ``glob`` (``*`` any run, ``?`` one character) covers all of ``text``."""
    return _covers(glob_pattern(glob), text)


class Target(NamedTuple):
    """Where a request goes and who may decide it there (None: every allowed user)."""

    chats: list[int]
    approvers: list[int] | None = None


class _Compiled(NamedTuple):
    agent: re.Pattern | None
    kind: re.Pattern | None
    target: Target


def _compile(route: Route) -> _Compiled:
    return _Compiled(glob_pattern(route.agent), glob_pattern(route.kind),
                     Target(list(route.chats), route.approvers))


def check_approvers(routes: Iterable[Route], allowed: Iterable[int], required: int) -> None:
    """ValueError naming the route (``route #2``, from 1) whose approvers are not all
    allowed users (``TAPGATE_APPROVER_USER_IDS``), or are fewer than ``required`` (the
    default count of approvers a request needs: such a route's requests could never be
    decided)."""
    allowed = set(allowed)
    for n, route in enumerate(routes, 1):
        if route.approvers is None:
            continue
        strangers = [u for u in route.approvers if u not in allowed]
        if strangers:
            raise ValueError(f"route #{n}: field approvers: {strangers[0]} is not in "
                             "TAPGATE_APPROVER_USER_IDS (a route's approvers are some of the "
                             "allowed users)")
        if len(route.approvers) < required:
            raise ValueError(f"route #{n}: field approvers: {len(route.approvers)} approver(s), "
                             f"but requests need {required} "
                             "(TAPGATE_DEFAULT_REQUIRED_APPROVALS)")


def _first_index(routes: list[_Compiled], agent: str, kind: str) -> int | None:
    for n, route in enumerate(routes):
        if _covers(route.agent, agent) and _covers(route.kind, kind):
            return n
    return None


def _first_match(routes: list[_Compiled], agent: str, kind: str) -> Target | None:
    n = _first_index(routes, agent, kind)
    return None if n is None else routes[n].target


def first_route(routes: Iterable[Route], agent: str, kind: str) -> int | None:
    """The position (from 0) of the first of ``routes`` covering ``agent`` and ``kind``,
    as the router matches; None when none does."""
    return _first_index([_compile(r) for r in routes], agent, kind)


# --- the router ------------------------------------------------------------------------


class Router:
    """Which chats a request goes to, and every chat the bot may post requests to.

    ``routes`` are ``TAPGATE_ROUTES``; ``default_chat_ids`` the approver chats (no
    route matched); ``extra_chat_ids`` the escalation chats (never matched, but
    posted to). ``store`` supplies the stored routes (:mod:`storage.routes`).
    """

    def __init__(self, store: Any, routes: Iterable[Route] = (),
                 default_chat_ids: Iterable[int] = (), extra_chat_ids: Iterable[int] = (),
                 max_age: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.settings_routes = [_compile(r) for r in routes]
        self.default_chat_ids = list(dict.fromkeys(default_chat_ids))
        self.extra_chat_ids = list(dict.fromkeys(extra_chat_ids))
        self.max_age = max_age
        self.clock = clock
        self._stored: list[_Compiled] = []
        self._owed: list[int] = []
        self._loaded_at: float | None = None
        self._version = -1
        self._refreshing: asyncio.Future | None = None
        self._memo: dict[tuple[str, str], Target] = {}
        self._listeners: list[Callable[[], Any]] = []
        self._rebuild()

    @classmethod
    def from_settings(cls, store: Any, settings: Any, **kwargs: Any) -> Router:
        """The router of ``TAPGATE_ROUTES``, the approver and the escalation chats."""
        return cls(store, settings.routes, settings.approver_chat_ids,
                   settings.escalation_chat_ids, **kwargs)

    def subscribe(self, listener: Callable[[], Any]) -> None:
        """Call ``listener()`` when a refresh finds chats to post to that were not known
        (the notifier starts serving them)."""
        self._listeners.append(listener)

    # --- answers ---------------------------------------------------------------------

    async def target_for(self, agent: str, kind: str) -> Target:
        """Where a new request of ``agent`` and ``kind`` is posted and who may decide it
        (refreshing the stored routes first if they may be stale)."""
        if self.stale:
            await self.refresh()
        return self.target(agent, kind)

    def target(self, agent: str, kind: str) -> Target:
        """:meth:`target_for` from what is in memory now: the first stored route that
        matches, else the first of ``TAPGATE_ROUTES``, else the approver chats."""
        key = (agent, kind)
        found = self._memo.get(key)
        if found is None:
            found = (_first_match(self._stored, agent, kind)
                     or _first_match(self.settings_routes, agent, kind)
                     or Target(self.default_chat_ids))
            if len(self._memo) >= MEMO_MAX:
                self._memo.clear()
            self._memo[key] = found
        return found

    def all_chat_ids(self) -> list[int]:
        """Every chat a request may be posted to: any route's, the approver and the
        escalation chats (as known now; a stale view starts a refresh in the background)."""
        self._refresh_if_stale()
        return self._targets

    def served_chat_ids(self) -> list[int]:
        """What the notifier serves: :meth:`all_chat_ids`, and chats still holding owed
        copies (a route replaced while its requests were pending still gets their edits)."""
        self._refresh_if_stale()
        return self._served

    def is_route_chat(self, chat_id: int) -> bool:
        """True if requests may be posted to ``chat_id`` (as known now)."""
        return chat_id in self._target_set

    @property
    def routes(self) -> int:
        """How many routes are in effect (stored and of the settings)."""
        return len(self._stored) + len(self.settings_routes)

    # --- refreshing ------------------------------------------------------------------

    @property
    def stale(self) -> bool:
        """True if the stored routes should be read again before answering."""
        return (self._loaded_at is None or self._version != self.store.routes_version
                or self.clock() - self._loaded_at >= self.max_age)

    async def refresh(self) -> None:
        """Read the stored routes now; callers arriving meanwhile share the one read.
        A failed read keeps what is known (logged) and is retried after ``max_age``."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._load())
        await asyncio.shield(self._refreshing)

    async def close(self) -> None:
        """Wait for a refresh in flight (before the Store closes)."""
        if self._refreshing is not None and not self._refreshing.done():
            await asyncio.shield(self._refreshing)

    def _refresh_if_stale(self) -> None:
        if not self.stale or (self._refreshing is not None and not self._refreshing.done()):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): answer from memory
            return
        self._refreshing = asyncio.ensure_future(self._load())

    async def _load(self) -> None:
        version = self.store.routes_version  # before reading: a later store reads again
        try:
            snapshot = await self.store.run(self.store.routing_snapshot)
        except Exception as exc:  # the database is down, say: submits decide the rest
            log.warning("could not read the stored routes (%s); using those known", exc,
                        exc_info=not isinstance(exc, StorageError))
            self._loaded_at = self.clock()
            return
        before = set(self._served)
        self._stored = [_compile(r) for r in snapshot.routes]
        self._owed = list(snapshot.owed_chat_ids)
        self._memo = {}
        self._loaded_at, self._version = self.clock(), version
        self._rebuild()
        if not set(self._served) <= before:
            for listener in self._listeners:
                try:
                    listener()
                except Exception:  # a broken listener must not break routing
                    log.exception("route listener failed")

    def _rebuild(self) -> None:
        chats = [c for r in [*self._stored, *self.settings_routes] for c in r.target.chats]
        self._targets = list(dict.fromkeys([*self.default_chat_ids, *self.extra_chat_ids,
                                            *chats]))
        self._target_set = frozenset(self._targets)
        self._served = list(dict.fromkeys([*self._targets, *self._owed]))
