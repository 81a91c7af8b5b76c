"""Escalation exactly once across two ``tapgate run`` on one PostgreSQL database.

Every instance runs the expiry and escalation sweep (bot/expiry.py, scheduled by
each Service, not by the leader), here every 0.2 s: both race to escalate the
same requests, and the compare-and-set on ``escalated_at`` lets one win each.
Only the leader posts. Real processes (tests/clusterproc.py) against the fake
Telegram, on a fresh database.
"""

from __future__ import annotations

import re
from collections import Counter

import psycopg
import pytest

from tests.clusterproc import Cluster, PostCounter, log_of
from tests.fake_telegram import User
from tests.test_telegram import CHAT_A, CHAT_B, answer_of, edited_to

CAROL = User(1003, "carol", "Carol")
GROUP = -100900  # an escalation group: the fake paces it as Telegram does
ORIGINAL = [CHAT_A, CHAT_B]  # the approver chats of tests/botproc.py
ESCALATION = [GROUP, CAROL.id]
ESCALATED_LOG = re.compile(r"escalated \d+ request\(s\): (.+)$", re.MULTILINE)


@pytest.fixture
async def cluster(fake, db):
    group = Cluster(fake, db, approver_user_ids="1001,1002,1003",
                    escalation_chat_ids=",".join(map(str, ESCALATION)),
                    escalate_after="1s", expiry_interval="0.2s",
                    digest_threshold="0")  # one message per request: countable by id
    try:
        yield group
    finally:
        await group.stop()


def owed(url: str, ids: list[str]) -> int:
    """Copies of ``ids`` still owed a post or an edit."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM approval_message WHERE approval_id = "
                            "ANY(%s) AND (owed OR message_id IS NULL)", (ids,)).fetchone()[0]


def message_id_of(fake, approval_id: str, chat_id: int) -> int:
    call = next(c for c in fake.calls_of("sendMessage") if c.ok and approval_id in
                c.params["text"] and int(c.params["chat_id"]) == chat_id)
    return call.response["result"]["message_id"]


@pytest.mark.timeout(90)
async def test_each_request_escalates_once_and_a_tap_there_finishes_every_copy(fake, cluster,
                                                                               db):
    nodes = await cluster.start(2, at_once=True)
    counter = PostCounter(fake)
    ids: list[str] = []
    for node in nodes:  # requests taken by both instances
        async with node.http() as http:
            for i in range(3):
                answer = await http.post("/v1/approvals", json={
                    "agent": f"agent-{node.n}", "kind": "shell", "summary": f"deploy {i}"})
                assert answer.status_code == 201, answer.text
                ids.append(answer.json()["id"])

    await counter.wait_all(ids, ESCALATION, timeout=20)
    originals = {(i, c): message_id_of(fake, i, c) for i in ids for c in ORIGINAL}
    for (i, chat), mid in originals.items():
        await fake.wait_until(lambda c=chat, m=mid: "⏫ escalated" in fake.message(c, m).text,
                              what=f"{i}'s copy in {chat} says it escalated")
    await fake.wait_until(lambda: owed(db, ids) == 0, what="nothing owed")

    # One copy per request in every chat, the escalation chats included ...
    counts = counter.update()
    assert {(i, c): counts[(i, c)] for i in ids for c in ORIGINAL + ESCALATION} == \
        {(i, c): 1 for i in ids for c in ORIGINAL + ESCALATION}
    # ... each original edited once to say so ...
    edits = Counter((int(c.params["chat_id"]), int(c.params["message_id"]))
                    for c in fake.calls_of("editMessageText")
                    if c.ok and "escalated" in c.params.get("text", ""))
    assert {k: edits[(k[1], m)] for k, m in originals.items()} == \
        {k: 1 for k in originals}
    # ... and one sweep, on whichever instance, escalated each.
    logged = Counter(i.strip() for node in nodes for line in ESCALATED_LOG.findall(log_of(node))
                     for i in line.split(","))
    assert logged == Counter(ids), logged
    print(f"escalations by instance: "
          f"{[len(ESCALATED_LOG.findall(log_of(node))) for node in nodes]} sweeps")

    # A tap in an escalation chat decides; every copy of that request finishes.
    for target, chat in ((ids[0], GROUP), (ids[-1], CAROL.id)):
        tap = fake.tap(chat, message_id_of(fake, target, chat), CAROL, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, tap)
        for copy in ORIGINAL + ESCALATION:
            await edited_to(fake, copy, message_id_of(fake, target, copy), "Approved by @carol")
    assert counter.update() == counts  # nothing posted twice since

