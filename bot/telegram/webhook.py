"""Webhook mode: Telegram POSTs updates to ``TAPGATE_TELEGRAM_WEBHOOK_URL``.

The user's reverse proxy (TLS) forwards them to ``TAPGATE_WEBHOOK_LISTEN``, where
every instance runs this small aiohttp server; no instance polls. The leader
calls :func:`register` (``setWebhook``) at start; nothing ever calls
``deleteWebhook`` (another instance may still be serving, and a polling start
deletes the webhook itself).

Every request must carry ``X-Telegram-Bot-Api-Secret-Token`` equal to
``TAPGATE_WEBHOOK_SECRET`` (compared in constant time): anything else gets 403
before its body is read, and changes nothing. A body over 1 MiB gets 413, one
that is not a JSON update 400 — never a traceback. An update is claimed in the
database first (:meth:`storage.updates.UpdateStore.claim_update`: one INSERT
that conflicts on a duplicate ``update_id``), so an update Telegram redelivers,
to this instance or to another one behind the load balancer, is handled once;
then it is put on the Application's ``update_queue`` (the same queue polling
fills, so the same handlers and :class:`bot.telegram.updates.ChatLanes` run it)
and answered 200 at once, without waiting for its handler. If the database
cannot take the claim the answer is 503 and Telegram delivers the update again.
An instance killed between its claim's commit and the in-memory hand-over (no
await between them but the queue's) would lose that one update, as a polling
bot killed after confirming an offset would; a lost tap leaves its buttons in
place, to be tapped again.

Why not PTB's ``Updater.start_webhook``: it needs tornado (an extra dependency),
compares the secret with ``!=`` and logs a wrong one, answers a body that is not
JSON with a 500, calls ``setWebhook`` from every instance, and has no hook for a
once-only claim shared by several processes. aiohttp already serves the socket API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from datetime import timedelta

from aiohttp import web
from telegram import Bot, Update
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter
from telegram.ext import Application, ExtBot

from bot import redact
from bot.config import PREFIX, ConfigError, Settings
from storage.errors import TapgateError
from storage.store import Store

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY = 1 << 20  # Telegram's updates are a few KiB; a 4096-character text with entities fits
KEEP_SEEN = timedelta(days=1)  # Telegram gives up on an update after 24 hours
PRUNE_EVERY = 3600.0
REFUSAL_LOG_EVERY = 60.0  # a flood of forged requests is logged once a minute, counted
MAX_UPDATE_ID = (1 << 63) - 1


class WebhookServer:
    """The listener of one instance: receives, checks, claims and queues updates."""

    def __init__(self, app: Application, settings: Settings, store: Store):
        if settings.webhook_secret is None:
            raise ConfigError(f"{PREFIX}WEBHOOK_SECRET: missing")
        self.app = app
        self.store = store
        self.host, self.port = settings.webhook_address
        self._secret = settings.webhook_secret.get_secret_value().encode("ascii")
        self.bot_id = _bot_id(settings)
        self._runner: web.AppRunner | None = None
        self._pruner: asyncio.Task | None = None
        self._refusals_unlogged = 0
        self._refusal_logged_at = float("-inf")
        # Counters, for tests and logs.
        self.accepted = 0
        self.duplicates = 0
        self.refused = 0
        self.malformed = 0

    @property
    def url(self) -> str:
        """Where this listener is reachable (after :meth:`start`; port 0 resolved)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        web_app = web.Application(client_max_size=MAX_BODY)
        web_app.router.add_get("/healthz", self._health)
        # Any path: the reverse proxy may keep or strip the public URL's path; the
        # secret header, not the path, is what authenticates a request.
        web_app.router.add_post("/{tail:.*}", self._receive)
        self._runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(f"{PREFIX}WEBHOOK_LISTEN: cannot listen on "
                              f"{self.host}:{self.port} ({exc.strerror or exc})") from None
        self.port = self._runner.addresses[0][1]
        self._pruner = asyncio.create_task(self._prune_forever(), name="tapgate-webhook-prune")
        log.info("webhook: listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening (requests in flight finish first); the webhook stays set."""
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # ------------------------------------------------------------------ requests

    async def _health(self, request: web.Request) -> web.Response:
        status = 200 if self.app.running else 503
        return web.json_response({"ok": status == 200}, status=status)

    async def _receive(self, request: web.Request) -> web.Response:
        if not self._authentic(request):
            self._note_refusal(request)
            return _answer(403, "forbidden")
        if request.content_length is not None and request.content_length > MAX_BODY:
            self.malformed += 1
            return _answer(413, "body too large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.malformed += 1
            return _answer(413, "body too large")
        update = self._decode(body)
        if update is None:
            self.malformed += 1
            return _answer(400, "not a Telegram update")
        if not self.app.running:  # stopping: let Telegram deliver it again (maybe elsewhere)
            return _answer(503, "shutting down", retry=True)
        try:
            fresh = await self.store.run(self.store.claim_update, self.bot_id, update.update_id)
        except TapgateError as exc:
            log.warning("webhook: update %d not taken, the database failed (%s); Telegram "
                        "will deliver it again", update.update_id, exc)
            return _answer(503, "database unavailable", retry=True)
        if not fresh:
            self.duplicates += 1
            log.info("webhook: update %d was taken already; ignored", update.update_id)
            return _answer(200, None, duplicate=True)
        if isinstance(self.app.bot, ExtBot):  # as PTB's own webhook handler does
            self.app.bot.insert_callback_data(update)
        await self.app.update_queue.put(update)
        self.accepted += 1
        return _answer(200, None)

    def _authentic(self, request: web.Request) -> bool:
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            return False
        # Headers are str; surrogatepass keeps any byte sequence comparable (and unequal).
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._secret)

    def _note_refusal(self, request: web.Request) -> None:
        self.refused += 1
        self._refusals_unlogged += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_EVERY:
            # Never the header's value: it may be a near miss of the secret.
            log.warning("webhook: refused %d request(s) without the right secret token "
                        "(latest from %s)", self._refusals_unlogged, request.remote)
            self._refusal_logged_at, self._refusals_unlogged = now, 0

    def _decode(self, body: bytes) -> Update | None:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        update_id = data.get("update_id") if isinstance(data, dict) else None
        if (not isinstance(update_id, int) or isinstance(update_id, bool)
                or not 0 <= update_id <= MAX_UPDATE_ID):
            return None
        try:
            update = Update.de_json(data, self.app.bot)
        except Exception as exc:  # any malformed field: a 400, never a traceback
            log.warning("webhook: update %d could not be decoded: %r", update_id, exc)
            return None
        return update

    # ------------------------------------------------------------------ pruning

    async def _prune_forever(self) -> None:
        while True:
            try:
                before = self.store.clock() - KEEP_SEEN
                removed = await self.store.run(self.store.prune_updates, before)
                if removed:
                    log.debug("webhook: forgot %d update(s) older than a day", removed)
            except TapgateError as exc:
                log.warning("webhook: pruning seen updates failed (%s); retrying later", exc)
            await asyncio.sleep(PRUNE_EVERY)


def _answer(status: int, error: str | None, *, retry: bool = False,
            duplicate: bool = False) -> web.Response:
    # Never a "method" field: Telegram would run it as a Bot API call.
    body: dict = {"ok": error is None}
    if error is not None:
        body["error"] = error
    if duplicate:
        body["duplicate"] = True
    headers = {"Retry-After": "1"} if retry else None
    return web.json_response(body, status=status, headers=headers)


def _bot_id(settings: Settings) -> int:
    token = settings.telegram_token.get_secret_value() if settings.telegram_token else ""
    head = token.partition(":")[0]
    return int(head) if head.isdigit() else 0


def secrets_of(settings: Settings) -> list[str]:
    """What the log filter must hide in webhook mode: the secret token (PTB logs every
    call's parameters at DEBUG, setWebhook's included)."""
    return [settings.webhook_secret.get_secret_value()] if settings.webhook_secret else []


_redacted: set[str] = set()


async def start(app: Application, settings: Settings, store: Store) -> WebhookServer:
    """Start this instance's listener (every instance, leader or not); stop it with
    ``await server.stop()`` before ``app.stop()``."""
    fresh = [s for s in secrets_of(settings) if s not in _redacted]
    if fresh:
        redact.install(fresh)
        _redacted.update(fresh)
    server = WebhookServer(app, settings, store)
    await server.start()
    return server


async def stop(server: WebhookServer | None) -> None:
    """Stop ``server`` (None: nothing to stop). Never calls ``deleteWebhook``."""
    if server is not None:
        await server.stop()


async def register(bot: Bot, settings: Settings, retry_for: float | None = None) -> None:
    """The leader's part: point Telegram at ``TAPGATE_TELEGRAM_WEBHOOK_URL`` with the
    secret. Idempotent (every new leader calls it). Retries network errors with
    backoff (for ``retry_for`` seconds, None: until cancelled); a URL Telegram
    refuses is a ConfigError naming the variable."""
    from bot.telegram.app import ALLOWED_UPDATES

    loop = asyncio.get_running_loop()
    deadline = None if retry_for is None else loop.time() + retry_for
    delay = 1.0
    while True:
        try:
            await bot.set_webhook(
                url=settings.telegram_webhook_url,
                secret_token=settings.webhook_secret.get_secret_value(),
                allowed_updates=ALLOWED_UPDATES, drop_pending_updates=False)
            log.info("webhook: Telegram delivers updates to %s", settings.telegram_webhook_url)
            return
        except BadRequest as exc:  # before NetworkError: BadRequest is one
            raise ConfigError(f"{PREFIX}TELEGRAM_WEBHOOK_URL: refused by Telegram "
                              f"({exc.message})") from None
        except InvalidToken:
            raise ConfigError(f"{PREFIX}TELEGRAM_TOKEN: rejected by Telegram (check the "
                              "token from @BotFather)") from None
        except (NetworkError, RetryAfter) as exc:
            if deadline is not None and loop.time() + delay > deadline:
                raise
            log.warning("webhook: setWebhook failed (%s); retrying in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


RECENT_ERROR = 3600  # seconds: an older delivery error is history, not a problem now


async def check(bot: Bot, settings: Settings, now: float | None = None,
                ) -> tuple[bool, str] | None:
    """For ``tapgate doctor``: what Telegram says about the webhook (``getWebhookInfo``),
    as (ok, one line); None when there is nothing to say (polling, no webhook set)."""
    info = await bot.get_webhook_info()
    now = time.time() if now is None else now
    pending = f"{info.pending_update_count} update(s) waiting"
    if not settings.webhook_mode:
        if not info.url:
            return None
        return False, (f"a webhook is set ({info.url}) but {PREFIX}TELEGRAM_WEBHOOK_URL is "
                       "empty: `tapgate run` polls and deletes it at start (set the URL on "
                       "every instance to keep webhook mode)")
    wanted = settings.telegram_webhook_url
    if not info.url:
        return True, (f"webhook not set yet: `tapgate run` sets {wanted} at start "
                      f"({pending})")
    if info.url != wanted:
        return False, (f"Telegram delivers to {info.url}, not {PREFIX}TELEGRAM_WEBHOOK_URL "
                       f"({wanted}); `tapgate run` changes it at start")
    error_at = info.last_error_date.timestamp() if info.last_error_date else None
    if info.last_error_message and error_at is not None and now - error_at < RECENT_ERROR:
        return False, (f"webhook {wanted}: Telegram's last delivery failed "
                       f"{int(now - error_at)} s ago: {info.last_error_message} ({pending}); "
                       f"check the reverse proxy forwards to {settings.webhook_listen} "
                       "with the X-Telegram-Bot-Api-Secret-Token header")
    return True, f"webhook {wanted}: Telegram delivers there ({pending})"
