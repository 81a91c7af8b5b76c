"""No request makes the socket API answer 5xx: schemathesis fuzzes every route of
``/v1/openapi.json`` (valid and invalid inputs) over the real Unix socket.

The server runs in a thread with its own event loop (hypothesis drives a
synchronous test); every generated case is sent with httpx over the socket.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from bot.api.server import SocketServer
from bot.approvals import ApprovalManager
from storage.records import NewApproval, RunUpsert
from tests.test_api import pricer

CASES = int(os.environ.get("TAPGATE_FUZZ_CASES", "200"))  # more for a deeper local hunt


class ServerThread:
    """A SocketServer serving from its own thread and event loop."""

    def __init__(self, store, path: Path):
        self.store = store
        self.path = path
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            manager = ApprovalManager(self.store, chat_ids=[])
            server = SocketServer(self.path, [os.getuid()], self.store, manager, pricer())
            await server.start()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await server.stop()


def _seed(store) -> None:
    """Records for the fuzzer's ids to hit now and then (most will be 404s)."""
    store.upsert_run(RunUpsert(id="0"))
    store.upsert_run(RunUpsert(id="halted"))
    store.cancel_run("halted")
    store.create_approval(NewApproval(agent="a", kind="k", summary="s", ttl_seconds=60))


def test_fuzz_never_answers_5xx(store):
    _seed(store)
    directory = Path(tempfile.mkdtemp(prefix="tg", dir="/tmp"))
    path = directory / "api.sock"
    failures: list[str] = []
    statuses: dict[int, int] = {}
    try:
        with ServerThread(store, path), httpx.Client(
                transport=httpx.HTTPTransport(uds=str(path)), base_url="http://tapgate",
                timeout=30) as http:
            doc = http.get("/v1/openapi.json").json()
            schema = schemathesis.openapi.from_dict(doc)
            operations = [result.ok() for result in schema.get_all_operations()]
            assert len(operations) == len(doc_operations(doc))
            strategy = st.one_of([op.as_strategy(generation_mode=mode)
                                  for op in operations
                                  for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])

            @settings(max_examples=CASES, deadline=None, database=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def check(case) -> None:
                kwargs = case.as_transport_kwargs(base_url="http://tapgate")
                try:
                    request = http.build_request(
                        kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                        headers={k: v for k, v in kwargs.get("headers", {}).items()
                                 if k.lower() not in ("connection", "accept-encoding")},
                        content=kwargs.get("data"), json=kwargs.get("json"))
                except (httpx.InvalidURL, UnicodeEncodeError, TypeError, ValueError):
                    return  # not sendable over HTTP/1.1 at all
                if "wait" in request.url.params:  # keep long-polls short
                    request.url = request.url.copy_set_param("wait", "0")
                try:
                    response = http.send(request)
                except httpx.LocalProtocolError:
                    return
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code >= 500:
                    failures.append(f"{request.method} {request.url} -> "
                                    f"{response.status_code} {response.text[:300]}")

            check()
            assert http.get("/v1/health").json()["status"] == "ok"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert not failures, "\n".join(failures[:20])
    assert len(statuses) >= 4, statuses  # successes and several kinds of refusal were reached
    print("statuses:", dict(sorted(statuses.items())))


def doc_operations(doc: dict) -> list[tuple[str, str]]:
    return [(m, p) for p, ops in doc["paths"].items() for m in ops]


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
