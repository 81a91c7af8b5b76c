"""Budgets survive restarts: a new start of ``tapgate run`` forgets neither money spent
nor steps taken (the checkpoint is where the agent resumes, not a reset)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.botproc import BotProcess
from tests.test_socket_roles import admin


async def test_a_restart_keeps_usage_and_the_halt(fake, tmp_path):
    url = f"sqlite:///{tmp_path / 'tapgate.db'}"
    sock_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="tgr-"))  # AF_UNIX paths are short
    sock = sock_dir / "tapgate.sock"
    async with BotProcess(fake, url, socket_path=sock):
        admin(sock, "PUT", "/v1/runs/r1", {"budget_dollars": 1.0, "budget_loops": 10})
        admin(sock, "PUT", "/v1/runs/r1/steps/0", {})
        admin(sock, "POST", "/v1/ledger", {"run_id": "r1", "model": "m", "dollars": 0.25})
        assert admin(sock, "POST", "/v1/runs/r1/checkpoints",
                     {"payload": {"cursor": 1}}).status_code == 201
        admin(sock, "PUT", "/v1/runs/r1/steps/1", {})
        admin(sock, "POST", "/v1/ledger", {"run_id": "r1", "model": "m", "dollars": 0.7})
    async with BotProcess(fake, url, socket_path=sock):
        run = admin(sock, "GET", "/v1/runs/r1").json()
        assert (run["usage_dollars"], run["usage_loops"], run["status"]) == (0.95, 2, "running")
        # The money spent before the restart still counts against the budget.
        crossed = admin(sock, "POST", "/v1/ledger", {"run_id": "r1", "model": "m",
                                                      "dollars": 0.05})
        assert crossed.status_code == 201
        refused = admin(sock, "POST", "/v1/ledger", {"run_id": "r1", "model": "m",
                                                      "dollars": 0.01})
        assert refused.status_code == 402
        assert refused.json()["error"]["details"][0]["halt_reason"] == "dollar_budget_exceeded"
        latest = admin(sock, "GET", "/v1/runs/r1/checkpoints/latest").json()
        assert latest["payload"] == {"cursor": 1} and latest["usage_dollars"] == 0.25
    shutil.rmtree(sock_dir, ignore_errors=True)
