"""Typed records of the standing rules: rules that approve requests by themselves
(and their uses and the reply prompts that make them), and routes that say which
chats a request goes to. The Store takes and returns them like :mod:`storage.records`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, StrictInt, field_validator

from storage.records import MAX_USER_ID, Record


class NewRule(Record):
    """What :meth:`Store.create_rule` needs: approve requests of ``agent`` and ``kind``
    whose summary ``match`` globs, in ``run_id`` only if set, until ``expires_at``."""

    agent: str
    kind: str
    match: str
    run_id: str | None = None
    created_by: str
    expires_at: datetime | None = None
    chat_id: int | None = None
    origin: str | None = None
    source_approval_id: str | None = None
    submitter_uid: int | None = None


class Rule(Record):
    """A standing decision: matching new requests are approved as they are submitted."""

    id: int
    agent: str
    kind: str
    match: str = Field(description="glob on the summary; * is the only wildcard")
    run_id: str | None = Field(None, description="a session rule's run (null: any run)")
    created_by: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    uses: int = 0
    last_used_at: datetime | None = None
    chat_id: int | None = Field(None, description="the chat it was made in (null: CLI/API)")
    origin: str | None = Field(None, description="the summary it was made from")
    source_approval_id: str | None = None
    submitter_uid: int | None = Field(None, description="only requests this uid submits "
                                                        "over the socket (null: any uid)")

    def is_live(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class RuleUse(Record):
    """A rule's uses in one hour, as the digest line in ``chat_id`` shows them."""

    rule_id: int
    window_start: datetime
    chat_id: int | None = None
    uses: int
    shown_uses: int
    message_id: int | None = None
    agent: str
    kind: str
    match: str


class ReplyPrompt(Record):
    """A ForceReply message the bot sent asking for a reason or an edit."""

    id: int
    chat_id: int
    message_id: int
    approval_id: str
    action: Literal["reason", "edit"]
    user_id: int
    created_at: datetime
    answered_at: datetime | None = None


# --- routes ---------------------------------------------------------------------

MAX_CHAT_ID = 2**63 - 1  # a Telegram chat id fits a signed 64-bit integer


class Route(Record):
    """A routing rule: requests whose agent and kind match these globs (``*`` any run of
    characters, ``?`` one character) are posted to ``chats`` (see :mod:`bot.routing`)."""

    agent: str = Field("*", min_length=1, max_length=200)
    kind: str = Field("*", min_length=1, max_length=200)
    chats: list[StrictInt] = Field(min_length=1, max_length=100)
    approvers: list[StrictInt] | None = Field(
        None, min_length=1, max_length=100,
        description="Telegram user ids who alone may decide its requests until they "
                    "escalate (null: every allowed user)")

    @field_validator("chats")
    @classmethod
    def _chat_ids(cls, value: list[int]) -> list[int]:
        for chat in value:
            if chat == 0 or abs(chat) > MAX_CHAT_ID:
                raise ValueError(f"{chat} is not a Telegram chat id")
        return list(dict.fromkeys(value))

    @field_validator("approvers")
    @classmethod
    def _user_ids(cls, value: list[int] | None) -> list[int] | None:
        for user in value or ():
            if not 1 <= user <= MAX_USER_ID:
                raise ValueError(f"{user} is not a Telegram user id")
        return None if value is None else list(dict.fromkeys(value))
