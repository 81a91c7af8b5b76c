"""Wiring python-telegram-bot: the Application, its handlers, its rate limiter, and how
updates are scheduled (:mod:`bot.telegram.updates`)."""

from __future__ import annotations

from telegram import BotCommand, Update
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.request import HTTPXRequest

from bot.approvals import ApprovalManager
from bot.config import Settings
from bot.telegram import decisions, handlers, render
from bot.telegram.fence import FencedRequest, tls_context
from bot.telegram.gate import Gate, Refusals, learn_routes
from bot.telegram.notifier import TelegramNotifier
from bot.telegram.rule_digest import RuleDigest
from bot.telegram.updates import ChatLanes
from bot.topics import Topics
from storage.store import Store

ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
POLL_TIMEOUT = 10
UPDATES_REQUEST = "tapgate_updates_request"
STOP_GRACE = 2.0  # seconds running handlers get at shutdown before they are cancelled
DIGEST_SWEEP = 10.0  # seconds: on start, and uses counted by another instance


def build_application(settings: Settings, manager: ApprovalManager, store: Store,
                      max_retries: int = 5) -> Application:
    """The Application with every handler, pointed at ``TAPGATE_TELEGRAM_API_URL``."""
    api = settings.telegram_api_url
    tls = {"verify": tls_context()}
    updates_request = FencedRequest(connect_timeout=10, read_timeout=POLL_TIMEOUT + 10,
                                    httpx_kwargs=tls)
    app = (
        ApplicationBuilder()
        .token(settings.telegram_token.get_secret_value())
        .base_url(f"{api}/bot")
        .base_file_url(f"{api}/file/bot")
        .rate_limiter(AIORateLimiter(max_retries=max_retries))
        .concurrent_updates(ChatLanes())
        .request(HTTPXRequest(connection_pool_size=32, connect_timeout=10, read_timeout=20,
                              write_timeout=20, pool_timeout=10, httpx_kwargs=tls))
        .get_updates_request(updates_request)
        .build()
    )
    app.bot_data[UPDATES_REQUEST] = updates_request  # bot.leader fences it
    notifier = TelegramNotifier(app.bot, store, settings.request_chat_ids,
                                digest_threshold=settings.digest_threshold)
    manager.subscribe(notifier.on_approval)
    if settings.topic_per != "none":  # a forum topic per agent or run (bot/topics.py)
        notifier.topics = Topics(app.bot, store, settings.topic_per)
    router = manager.router  # bot.routing.Router (None: every request to every chat)
    if router is not None:
        notifier.router = router
        router.subscribe(notifier.kick)  # a chat learnt while running is served at once
    digest = RuleDigest(app.bot, store, settings.approver_chat_ids, notifier)
    manager.subscribe(digest.on_approval)
    app.bot_data["tapgate"] = handlers.FrontEnd(
        manager=manager, store=store, notifier=notifier,
        gate=Gate(set(settings.approver_user_ids), settings.request_chat_ids, router),
        refusals=Refusals(), digest=digest, router=router,
        session_rule_ttl=settings.session_rule_ttl)
    _schedule_digest(app, digest)
    if router is not None:  # first of all (bot.leader's fence is group -2)
        app.add_handler(TypeHandler(Update, learn_routes), group=-3)
    # Before every other handler, deciding nothing: a message from an approver chat
    # that refused the bot (the user unblocked it, or pressed /start) retries it now.
    app.add_handler(MessageHandler(filters.ALL, handlers.on_any_message, block=False),
                    group=-1)
    app.add_handler(CallbackQueryHandler(decisions.on_callback))
    app.add_handler(CommandHandler(["start", "help"], handlers.on_help))
    app.add_handler(CommandHandler("pending", handlers.on_pending))
    app.add_handler(CommandHandler("approve", handlers.on_approve))
    app.add_handler(CommandHandler("deny", handlers.on_deny))
    app.add_handler(CommandHandler("spend", handlers.on_spend))
    app.add_handler(CommandHandler("rules", decisions.on_rules))
    app.add_handler(CommandHandler("revoke", decisions.on_revoke))
    # A reason or an edit arrives as a reply to the bot's ForceReply prompt; nothing else
    # typed decides anything.
    app.add_handler(MessageHandler(filters.REPLY & filters.TEXT & ~filters.COMMAND,
                                   decisions.on_reply))
    app.add_error_handler(handlers.on_error)
    return app


def front_end(app: Application) -> handlers.FrontEnd:
    return app.bot_data["tapgate"]


def _schedule_digest(app: Application, digest: RuleDigest) -> None:
    """Look for digest lines owed every ``DIGEST_SWEEP`` seconds (from the start: what a
    previous run left owed is paid); only the instance that posts (leads) does anything."""

    async def job(context) -> None:
        digest.poke()

    app.job_queue.run_repeating(job, interval=DIGEST_SWEEP, first=1.0,
                                name="tapgate-rule-digest",
                                job_kwargs={"max_instances": 1, "coalesce": True})


async def stop_handling(app: Application, grace: float = STOP_GRACE) -> None:
    """Before ``app.stop()``: give running handlers ``grace`` seconds, then cancel them,
    and cancel refusals still in flight. ``app.stop()`` waits for every update's
    handler, and one held by a group's pacer could otherwise hold shutdown for minutes."""
    processor = app.update_processor
    if isinstance(processor, ChatLanes):
        await processor.close(grace)
    await front_end(app).refusals.close()
    if front_end(app).digest is not None:
        await front_end(app).digest.stop(grace)


BOT_COMMANDS = [BotCommand(name, text) for name, text in render.COMMANDS]
