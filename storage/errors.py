"""Tapgate's one error hierarchy.

Every error a caller may act on derives from :class:`TapgateError`; the data the
UI or the API needs (the current approval, the budget numbers) travels on
attributes. Driver errors are wrapped at the storage seam into
:class:`StorageError`, keeping the original as ``orig``.
"""

from __future__ import annotations

from typing import Any


class TapgateError(Exception):
    """Root of every error Tapgate raises on purpose."""

    code = "error"


class NotFound(TapgateError):
    """The record does not exist."""

    code = "not_found"


class Conflict(TapgateError):
    """The request contradicts what is stored (e.g. an idempotency key reused)."""

    code = "conflict"


class AlreadyFinal(Conflict):
    """An approval left ``pending`` before this transition could happen.

    ``approval`` is its current state, so the UI can say who decided.
    ``expired_now`` is true when this very call found the request past its
    ``expires_at`` and recorded the expiry (callers must then tell everyone).
    """

    def __init__(self, approval: Any, expired_now: bool = False):
        self.approval = approval
        self.expired_now = expired_now
        super().__init__(f"approval {approval.id} is already {approval.status}")


class AlreadyVoted(Conflict):
    """This approver's approval of a request needing several was already counted;
    ``approval`` is the request as it stands."""

    def __init__(self, approval: Any, voter: str):
        self.approval = approval
        super().__init__(f"{voter} already approved {approval.id}; it needs another approver")


class RunNotRunning(Conflict):
    """The run is not in a state that allows this change."""


class BudgetExceeded(TapgateError):
    """The run is halted (or this change halted it); carries the reason and numbers."""

    code = "budget_exceeded"

    def __init__(self, run: Any, reason: str | None = None):
        self.run = run
        self.reason = reason or run.halt_reason
        super().__init__(f"run {run.id} is halted: {self.reason}")


class Forbidden(TapgateError):
    """The caller may not do this (a tool outside the allowlist, a stranger)."""

    code = "forbidden"


class VoteRefused(Forbidden):
    """An approver's decision that does not count; ``approval`` is the request as it
    stands (still pending)."""

    def __init__(self, approval: Any, message: str):
        self.approval = approval
        super().__init__(message)


class SelfApproval(VoteRefused):
    """The approver is the person the request acts for (``requested_by``): separation
    of duties says their approval does not count."""

    def __init__(self, approval: Any):
        super().__init__(approval, f"approval {approval.id} acts for this approver, whose "
                                   "approval does not count toward it")


class NotAnApprover(VoteRefused):
    """The request's route names its approvers, and this Telegram user is not one of them
    (until the request escalates; :mod:`storage.approvers`)."""

    def __init__(self, approval: Any):
        super().__init__(approval, f"approval {approval.id} is decided only by its route's "
                                   "approvers until it escalates")


class InvalidArgument(TapgateError):
    """A value is out of range or malformed (bad ``by``, bad metadata key, ...)."""

    code = "validation_error"


class LimitExceeded(InvalidArgument):
    """A value would take a counter past its cap (422 naming the field, never a retry)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.details = [{"loc": ["body", field], "msg": message, "type": "limit_exceeded"}]
        super().__init__(f"invalid body.{field}: {message}")


class SchemaTooNew(TapgateError):
    """The database holds migrations this code does not know: refuse to touch it."""

    code = "schema_too_new"

    def __init__(self, on_disk: int, binary: int, unknown: list[str]):
        self.on_disk = on_disk
        self.binary = binary
        self.unknown = unknown
        super().__init__(
            "on-disk schema is newer than this binary; upgrade "
            f"(on-disk v{on_disk} > binary v{binary}; unknown migrations: {', '.join(unknown)})"
        )


class StorageError(TapgateError):
    """A database failure that is not one of the above; ``orig`` is the driver's error."""

    code = "storage_error"

    def __init__(self, message: str, orig: BaseException | None = None):
        self.orig = orig
        super().__init__(message)
