"""Rules: standing decisions ("this session", "always") and what they need in storage.

A live rule (not revoked, not past ``expires_at``) approves a new request of its
agent and kind whose summary its glob matches — inside the transaction that creates
the request (:meth:`ApprovalStore.create_approval` calls :func:`take_rule`), so the
request is never seen pending and the rule's use is counted exactly once.

Also here: the hourly use counts behind the chat's digest lines (``rule_use``), and
the ForceReply prompts through which a reason or an edit arrives (``reply_prompt``).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import lru_cache

from storage.approvers import rule_applies
from storage.base import StoreBase, columns, decoder, unit_of_work
from storage.clock import from_text, to_text
from storage.errors import AlreadyFinal, Conflict, InvalidArgument, NotFound
from storage.models import ReplyPromptRow, RuleRow, RuleUseRow
from storage.records import Approval
from storage.rule_records import NewRule, ReplyPrompt, Rule, RuleUse

NEVER_RULED = frozenset({"budget.grant", "tool_call"})
"""Kinds no rule ever decides: the bot's own budget grants, and tool calls (their run's
policy already says whether they need a person)."""
SHELL_KINDS = frozenset({"bash", "shell", "run_shell_command"})
# What lets one command line run another: a wildcard rule must never reach past it.
SHELL_CONTROL = re.compile(r"[;&|`<>\n\r]|\$\(")


def is_shell_kind(kind: str) -> bool:
    return kind.casefold() in SHELL_KINDS


@lru_cache(maxsize=1024)
def _pattern(match: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in match.split("*")), re.DOTALL)


def glob_matches(match: str, summary: str, kind: str) -> bool:
    """True if ``match`` (``*`` = any run of characters, nothing else is special) covers
    all of ``summary``. For shell-like kinds a command holding control characters
    (``; & | ` < >``, ``$(``, a newline) is matched only by a rule equal to it: ``git *``
    approves ``git log -5`` but never ``git log; rm -rf ~``."""
    if match == summary:
        return True
    if "*" not in match:
        return False
    if is_shell_kind(kind) and SHELL_CONTROL.search(summary):
        return False
    return _pattern(match).fullmatch(summary) is not None


def short_name(who: str) -> str:
    """``telegram:123 (@alice)`` → ``@alice``; other deciders as they are."""
    found = re.search(r"\((.+)\)$", who)
    return found.group(1) if found else who


def rule_record(row: RuleRow) -> Rule:
    return Rule(id=row.id, agent=row.agent, kind=row.kind, match=row.match, run_id=row.run_id,
                created_by=row.created_by, created_at=row.created_at,
                expires_at=row.expires_at, revoked_at=row.revoked_at,
                revoked_by=row.revoked_by, uses=row.uses, last_used_at=row.last_used_at,
                chat_id=row.chat_id, origin=row.origin,
                source_approval_id=row.source_approval_id, submitter_uid=row.submitter_uid)


def _prompt_record(row: ReplyPromptRow) -> ReplyPrompt:
    return ReplyPrompt(id=row.id, chat_id=row.chat_id, message_id=row.message_id,
                       approval_id=row.approval_id, action=row.action, user_id=row.user_id,
                       created_at=row.created_at, answered_at=row.answered_at)


_decode_rule = decoder(RuleRow)


def hour_of(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


def take_rule(store: StoreBase, agent: str, kind: str, summary: str, run_id: str | None,
              submitter_uid: int | None, approvers: list[int] | None,
              now: datetime) -> Rule | None:
    """Inside a write: the oldest live rule covering this request, its use counted (the
    rule's ``uses`` and its hour's digest line); None when no rule applies. A rule made
    from a request covers only requests of the same ``submitter_uid``: the agent's name
    is its own claim, its uid is not. A request with approvers (its route's) takes only
    rules one of them made (or the CLI or API: :func:`storage.approvers.rule_applies`)."""
    if kind in NEVER_RULED:
        return None
    p = store.db.param
    # Only ids and globs: a submission matched against many rules decodes none but the hit.
    candidates = store.db.execute_sql(store.statement("rule.live", lambda: (
        f'SELECT "id", "match", "created_by" FROM "approval_rule" '
        f'WHERE "agent" = {p} AND "kind" = {p} '
        f'AND "revoked_at" IS NULL AND ("expires_at" IS NULL OR "expires_at" > {p}) '
        f'AND ("run_id" IS NULL OR "run_id" = {p}) '
        f'AND ("submitter_uid" IS NULL OR "submitter_uid" = {p}) ORDER BY "id"')),
        (agent, kind, to_text(now), run_id, submitter_uid)).fetchall()
    for rule_id, match, created_by in candidates:
        if glob_matches(match, summary, kind) and rule_applies(approvers, created_by):
            return rule_record(_count_use(store, rule_id, now))
    return None


def _count_use(store: StoreBase, rule_id: int, now: datetime):
    """Count one use of the rule (and of its hour's digest line); return its row."""
    p, at = store.db.param, to_text(now)
    rule = _decode_rule(store.db.execute_sql(store.statement("rule.used", lambda: (
        f'UPDATE "approval_rule" SET "uses" = "uses" + 1, "last_used_at" = {p} '
        f'WHERE "id" = {p} RETURNING {columns(RuleRow)}')), (at, rule_id)).fetchone())
    store.db.execute_sql(store.statement("rule_use.count", lambda: (
        'INSERT INTO "rule_use" ("rule_id", "window_start", "chat_id", "uses", "shown_uses", '
        f'"owed", "updated_at") VALUES ({p}, {p}, {p}, 1, 0, TRUE, {p}) '
        'ON CONFLICT ("rule_id", "window_start") DO UPDATE SET "uses" = "rule_use"."uses" + 1, '
        '"owed" = TRUE')), (rule.id, to_text(hour_of(now)), rule.chat_id, at))
    return rule


def decided_by_rule(rule: Rule) -> str:
    return f"rule:{rule.id} ({short_name(rule.created_by)})"


class RuleStore(StoreBase):
    """Rule operations of the Store (mixed in next to :class:`ApprovalStore`, whose
    compare-and-set :meth:`decide_with_rule` shares)."""

    @unit_of_work
    def create_rule(self, new: NewRule, now: datetime | None = None) -> Rule:
        now = from_text(to_text(now or self.clock()))
        with self.write():
            return rule_record(self._insert_rule(new, now))

    def _insert_rule(self, new: NewRule, now: datetime) -> RuleRow:
        if new.kind in NEVER_RULED:
            raise InvalidArgument(f"kind {new.kind!r} is never decided by a rule")
        if not new.match.strip():
            raise InvalidArgument("a rule's match must not be empty")
        row = RuleRow.create(agent=new.agent, kind=new.kind, match=new.match,
                             run_id=new.run_id, created_by=new.created_by, created_at=now,
                             expires_at=new.expires_at, chat_id=new.chat_id,
                             origin=new.origin, source_approval_id=new.source_approval_id,
                             submitter_uid=new.submitter_uid)
        return RuleRow.get_by_id(row.id)

    @unit_of_work
    def decide_with_rule(self, approval_id: str, decided_by: str, new: NewRule,
                         now: datetime | None = None) -> tuple[Approval, Rule]:
        """Approve a pending request and create ``new`` in one transaction. Raises like
        :meth:`resolve_approval` (NotFound, AlreadyFinal) — and then no rule exists."""
        now = from_text(to_text(now or self.clock()))
        lost = None
        with self.write():
            try:
                approval = self._transition(approval_id, "approved", decided_by, None, now)
            except AlreadyFinal as exc:  # raised after this block: an expiry it made stays
                lost = exc
            else:
                if approval.status != "approved":  # a vote toward a quorum: undone here
                    raise InvalidArgument(
                        f"approval {approval_id} needs {approval.required_approvals} approvers: "
                        "a rule, one person's standing decision, cannot decide it")
                rule = self._insert_rule(new, now)
        if lost is not None:
            raise lost
        return approval, rule_record(rule)

    @unit_of_work
    def get_rule(self, rule_id: int) -> Rule:
        row = RuleRow.get_or_none(RuleRow.id == rule_id)
        if row is None:
            raise NotFound(f"rule {rule_id} not found")
        return rule_record(row)

    @unit_of_work
    def list_rules(self, live_only: bool = True, now: datetime | None = None) -> list[Rule]:
        """Rules, oldest first; only the live ones (not revoked, not expired) by default."""
        query = RuleRow.select().order_by(RuleRow.id)
        if live_only:
            now = now or self.clock()
            query = query.where(RuleRow.revoked_at.is_null()
                                & (RuleRow.expires_at.is_null() | (RuleRow.expires_at > now)))
        return [rule_record(r) for r in query]

    def iter_rules(self) -> list[Rule]:
        """Every rule ever made, for the audit export."""
        return self.list_rules(live_only=False)

    def _live_update(self, rule_id: int, values: dict, now: datetime) -> Rule:
        rows = list(RuleRow.update(**values)
                    .where((RuleRow.id == rule_id) & RuleRow.revoked_at.is_null()
                           & (RuleRow.expires_at.is_null() | (RuleRow.expires_at > now)))
                    .returning(RuleRow).execute())
        if rows:
            return rule_record(rows[0])
        row = RuleRow.get_or_none(RuleRow.id == rule_id)
        if row is None:
            raise NotFound(f"rule {rule_id} not found")
        how = (f"revoked by {row.revoked_by}" if row.revoked_at is not None else "expired")
        raise Conflict(f"rule {rule_id} is no longer live ({how})")

    @unit_of_work
    def revoke_rule(self, rule_id: int, revoked_by: str, now: datetime | None = None) -> Rule:
        """Revoke a live rule (compare-and-set); Conflict if it already ended."""
        now = now or self.clock()
        with self.write():
            return self._live_update(rule_id, {"revoked_at": now, "revoked_by": revoked_by},
                                     now)

    @unit_of_work
    def widen_rule(self, rule_id: int, match: str, by: str, now: datetime | None = None) -> Rule:
        """Change a live rule's glob (an approver picked a wider prefix)."""
        now = now or self.clock()
        if not match.strip():
            raise InvalidArgument("a rule's match must not be empty")
        with self.write():
            return self._live_update(rule_id, {"match": match}, now)

    # --- digest lines -----------------------------------------------------------------

    @unit_of_work
    def rule_uses_owed(self, limit: int = 50) -> list[RuleUse]:
        """Digest lines lagging their count (through the partial index), oldest first."""
        owed = []
        query = (RuleUseRow.select(RuleUseRow, RuleRow.agent, RuleRow.kind, RuleRow.match)
                 .join(RuleRow, on=(RuleRow.id == RuleUseRow.rule_id))
                 .where(RuleUseRow.owed).order_by(RuleUseRow.id).limit(limit).objects())
        for row in query:
            owed.append(RuleUse(rule_id=row.rule_id, window_start=row.window_start,
                                chat_id=row.chat_id, uses=row.uses, shown_uses=row.shown_uses,
                                message_id=row.message_id, agent=row.agent, kind=row.kind,
                                match=row.match))
        return owed

    @unit_of_work
    def record_rule_use(self, rule_id: int, window_start: datetime, shown_uses: int,
                        message_id: int | None = None, now: datetime | None = None) -> bool:
        """Record what a digest line shows; it stays owed unless ``shown_uses`` is the
        current count (a use that landed meanwhile gets its edit). True when settled."""
        p = self.db.param
        with self.write():
            cursor = self.db.execute_sql(
                f'UPDATE "rule_use" SET "shown_uses" = {p}, "owed" = ("uses" <> {p}), '
                f'"message_id" = COALESCE({p}, "message_id"), "updated_at" = {p} '
                f'WHERE "rule_id" = {p} AND "window_start" = {p} RETURNING "owed"',
                (shown_uses, shown_uses, message_id, to_text(now or self.clock()), rule_id,
                 to_text(window_start)))
            row = cursor.fetchone()
        return row is not None and not row[0]

    # --- reply prompts ----------------------------------------------------------------

    @unit_of_work
    def create_prompt(self, chat_id: int, message_id: int, approval_id: str, action: str,
                      user_id: int, now: datetime | None = None) -> ReplyPrompt:
        if action not in ("reason", "edit"):
            raise InvalidArgument(f"unknown prompt action {action!r}")
        with self.write():
            row = ReplyPromptRow.create(chat_id=chat_id, message_id=message_id,
                                        approval_id=approval_id, action=action,
                                        user_id=user_id, created_at=now or self.clock())
            return _prompt_record(ReplyPromptRow.get_by_id(row.id))

    @unit_of_work
    def find_prompt(self, chat_id: int, message_id: int) -> ReplyPrompt | None:
        row = ReplyPromptRow.get_or_none((ReplyPromptRow.chat_id == chat_id)
                                         & (ReplyPromptRow.message_id == message_id))
        return _prompt_record(row) if row else None

    @unit_of_work
    def answer_prompt(self, prompt_id: int, now: datetime | None = None) -> bool:
        """Mark a prompt answered (compare-and-set): True for the first answer only."""
        with self.write():
            return bool(ReplyPromptRow.update(answered_at=now or self.clock())
                        .where((ReplyPromptRow.id == prompt_id)
                               & ReplyPromptRow.answered_at.is_null()).execute())


def retire_rules_of(run_id: str, by: str, now: datetime) -> list[Rule]:
    """Inside a write: revoke the live session rules of ``run_id``."""
    rows = (RuleRow.update(revoked_at=now, revoked_by=by)
            .where((RuleRow.run_id == run_id) & RuleRow.revoked_at.is_null())
            .returning(RuleRow).execute())
    return [rule_record(r) for r in rows]


def expires_in(now: datetime, seconds: float) -> datetime:
    return from_text(to_text(now + timedelta(seconds=seconds)))

