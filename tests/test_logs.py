"""The bot token never appears in any log line, at any level."""

from __future__ import annotations

import io
import logging

from tests.botproc import BotProcess
from tests.test_strangers import ask, socket_api
from tests.test_telegram import ALICE, CHAT_A, edited_to, posted


async def test_debug_log_of_tapgate_run_never_shows_the_token(fake, sqlite_url):
    secret = fake.token.split(":", 1)[1]
    bot = BotProcess(fake, sqlite_url, log_level="DEBUG")
    await bot.start()
    try:
        async with socket_api(bot) as api:
            approval_id = await ask(api, "a logged request")
            msg = await posted(fake, CHAT_A, approval_id)
            fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
            await edited_to(fake, CHAT_A, msg.message_id, "Approved by @alice")
            fake.send_text(CHAT_A, ALICE, "/spend")
            await fake.wait_for("sendMessage", lambda c: "Spend by" in c.params["text"])
    finally:
        assert await bot.stop() == 0
    log = bot.log()
    assert " DEBUG " in log and "getUpdates" in log  # it did log at DEBUG, and a lot
    assert fake.token not in log
    assert secret not in log
    assert "[REDACTED]" in log  # PTB logged its URLs; the filter masked them


def test_the_filter_masks_messages_arguments_and_tracebacks():
    from bot.redact import RedactSecrets, token_secrets

    token = "123456:AAH-secret_part-xyz"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets(token_secrets(token)))
    logger = logging.getLogger("tests.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("url %s", f"https://api.telegram.org/bot{token}/getMe")
        logger.warning("only the secret: %r", {"part": "AAH-secret_part-xyz"})
        logger.warning(f"in the message itself bot{token}")
        try:
            raise ValueError(f"request to /bot{token}/sendMessage failed")
        except ValueError:
            logger.exception("failed")
        logger.warning("stack", stack_info=True, extra={"token": token})
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "AAH-secret_part-xyz" not in written
    assert written.count("[REDACTED]") >= 4 and "ValueError" in written
    assert token_secrets("") == [] and token_secrets("abc") == ["abc"]
