"""Two collectors against one PostgreSQL (deploy/README.md, "More than one replica"): runs send their batches to
both in turn, some batches twice (a retry that lands on the other replica), from several runs at once. Every
point is stored once, each run's NaN loss gives exactly one diagnosis, and each diagnosis exactly one
notification, sent once to a stand-in webhook receiver."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from tests.deploy.conftest import spawn_collector, wait_ready
from tests.deploy.feed import nan_run_batches, post

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TOKEN = "deploy-replica-token-not-a-secret"
PROJECT = "replicas"
RUNS = [f"run-{i}" for i in range(4)]
BATCHES = 6
STEPS_PER_BATCH = 10
WAIT_S = 60.0
# After everything is sent, watch this long for a late duplicate from the other replica's dispatcher.
QUIET_S = 6.0


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="test.webhook", daemon=True)

    def received(self) -> list[dict]:
        with self._lock:
            return list(self.bodies)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _send_run(run: str, urls: list[str]) -> list[dict]:
    """One run's batches, alternating between the replicas; every third batch retried on the other one."""
    answers = []
    with httpx.Client() as client:
        for i, body in enumerate(nan_run_batches(PROJECT, run, BATCHES, STEPS_PER_BATCH, nan_from_step=25)):
            first, other = urls[i % 2], urls[(i + 1) % 2]
            answers.append(post(client, first, TOKEN, body))
            if i % 3 == 2:
                answers.append(post(client, other, TOKEN, body) | {"replay": True})
    return answers


def test_two_collectors_store_diagnose_and_notify_exactly_once(servers, tmp_path, pg_url, receiver):
    # Started together: both apply migrations to the same empty database at the same time.
    replicas = [spawn_collector(pg_url, tmp_path, name=f"collector-{n}", token=TOKEN, webhook_url=receiver.url)
                for n in "ab"]
    servers.extend(replicas)
    for replica in replicas:
        wait_ready(replica, "/healthz")
        wait_ready(replica, "/readyz")
    urls = [r.url for r in replicas]

    with ThreadPoolExecutor(max_workers=len(RUNS)) as pool:
        results = dict(zip(RUNS, pool.map(lambda run: _send_run(run, urls), RUNS)))
    for run, answers in results.items():
        assert [a["duplicate"] for a in answers if not a.get("replay")] == [False] * BATCHES, run
        assert all(a["duplicate"] for a in answers if a.get("replay")), f"{run}: a replayed batch was stored again"

    # Every point once, whichever replica is asked.
    for run in RUNS:
        for url in urls:
            r = httpx.get(f"{url}/api/v1/runs/{PROJECT}/{run}/series/loss", timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200, r.text
            assert r.json()["downsampled"] is False
            steps = [p["step"] for p in r.json()["points"]]
            assert steps == list(range(1, BATCHES * STEPS_PER_BATCH + 1)), f"{run} via {url}"

    engine = create_engine(pg_url)
    try:
        from txwatch.store.models import Diagnosis, Notification, Run

        # Each run's NaN loss: one diagnosis, one episode.
        deadline = time.monotonic() + WAIT_S
        while True:
            with engine.connect() as conn:
                rows = conn.execute(select(Run.name, Diagnosis.rule_id, Diagnosis.layer, Diagnosis.episode)
                                    .join(Run, Run.id == Diagnosis.run_id)).all()
            nonfinite = {r.name for r in rows if r.rule_id == "loss-nonfinite"}
            if nonfinite == set(RUNS) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert nonfinite == set(RUNS), f"loss-nonfinite fired for {sorted(nonfinite)} only; diagnoses: {rows}"
        per_rule = Counter((r.name, r.rule_id, r.layer) for r in rows)
        assert {k: n for k, n in per_rule.items() if n > 1} == {}, "a diagnosis was raised twice (two episodes)"

        # Each diagnosis: one "fire" notification in the outbox, and it is sent.
        deadline = time.monotonic() + WAIT_S
        while True:
            with engine.connect() as conn:
                outbox = conn.execute(select(Notification.diagnosis_id, Notification.kind, Notification.sink,
                                             Notification.status).where(Notification.sink == "webhook")).all()
                diagnoses = conn.execute(select(func.count()).select_from(Diagnosis)).scalar_one()
            fires = [n for n in outbox if n.kind == "fire"]
            if fires and all(n.status == "sent" for n in fires) and len(fires) >= diagnoses:
                break
            assert time.monotonic() < deadline, f"notifications not all sent after {WAIT_S}s: {outbox}"
            time.sleep(0.5)
        assert Counter(n.diagnosis_id for n in fires) == Counter({d: 1 for d in {n.diagnosis_id for n in fires}})
        assert len(fires) == diagnoses

        # ...and the receiver got each of them once, even after both dispatchers had time to try again.
        time.sleep(QUIET_S)
        posted = [b for b in receiver.received() if b.get("kind") == "fire"]
        keys = Counter((b["run"]["name"], b["diagnosis"]["rule"], b["diagnosis"]["episode"]) for b in posted)
        assert {k: n for k, n in keys.items() if n > 1} == {}, "a notification reached the receiver twice"
        assert {(run, "loss-nonfinite", 1) for run in RUNS} <= set(keys)
        assert len(posted) == len(fires)
    finally:
        engine.dispose()
