"""The fence on ``getUpdates``: an instance that no longer leads polls nothing.

The leader stops polling as soon as it notices it lost the lead (:mod:`bot.leader`),
but a process that was paused (SIGSTOP, a frozen VM) wakes with PTB's polling loop
about to ask again; this request refuses while the lease (:mod:`bot.cluster`) is
not valid, so the new leader's long poll is never taken over by a stale one.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from typing import Any

import certifi
from telegram.error import NetworkError
from telegram.request import HTTPXRequest


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process, shared by every Telegram client: loading
    the CA bundle takes ~0.15 s, and each HTTPXRequest would load it again."""
    return ssl.create_default_context(cafile=certifi.where())


class FencedRequest(HTTPXRequest):
    """An ``HTTPXRequest`` that refuses every call while ``fence()`` is False."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fence: Callable[[], bool] | None = None

    async def do_request(self, *args: Any, **kwargs: Any):
        if self.fence is not None and not self.fence():
            raise NetworkError("this instance no longer leads: not polling Telegram")
        return await super().do_request(*args, **kwargs)
