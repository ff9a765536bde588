"""A collector process for the crash tests: ``python -m tests.alerts.crash_worker DB_URL SLACK_BASE_URL ACTION``.

ACTION: ``record-and-die`` records a fire notification, commits, and is SIGKILLed before dispatching;
``dispatch`` sends what is due and prints the count; ``dispatch-late`` does so as if ``CLAIM_TTL_S`` had passed
(a restarted collector after the crashed one's claim expired).
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta

from tests.alerts.conftest import fire
from tests.alerts.slack_standin import TOKEN
from txwatch.alerts import build_alerting
from txwatch.alerts.clock import utcnow
from txwatch.alerts.dispatcher import CLAIM_TTL_S
from txwatch.settings import Settings
from txwatch.store.db import make_engine, session_factory


def main() -> None:
    db_url, base_url, action = sys.argv[1:4]
    settings = Settings(slack_token=TOKEN, slack_channel="#alerts", slack_base_url=base_url, group_window_s=0)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    alerting = build_alerting(settings, sessions)
    if action == "record-and-die":
        fire(sessions, alerting)
        os.kill(os.getpid(), signal.SIGKILL)  # the daemon dies between deciding and sending
    elif action == "dispatch":
        print(alerting.dispatch_due(), flush=True)
    elif action == "dispatch-late":
        print(alerting.dispatch_due(utcnow() + timedelta(seconds=CLAIM_TTL_S + 1)), flush=True)
    else:
        raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main()
