"""The faults a hostile week brings (issue #16), each as a user meets it, against real components.

Slack: the real slack-sdk against the local stand-in, which stores a post and then resets the connection.
PostgreSQL: the real server behind a TCP proxy the test can stall. A full disk: a small tmpfs (root only).
Cross-site requests: a plain HTTP client sending what a browser would. Network traffic stays on loopback.
"""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests.alerts.slack_standin import TOKEN as SLACK_TOKEN
from tests.alerts.slack_standin import Reply, SlackStandin
from tests.collector.batches import T0, batch, dumps
from tests.live import start_live
from txwatch.settings import SettingsError, load_settings

ALERTS = "C0ALERTS1"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def slack():
    with SlackStandin() as standin:
        yield standin


def _wait(predicate, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        time.sleep(0.05)


def _nan_loss(run: str, seq: int = 1) -> bytes:
    return dumps(batch(run, seq=seq, series={"loss": [[1, T0 + 1, 2.0], [2, T0 + 2, float("nan")]]}))


# -- 1. Slack: a post whose answer is lost is not posted again --------------------------------------------------


@pytest.mark.parametrize("lost", [Reply(perform=True, reset=True), Reply(perform=True, status=500)],
                         ids=["reset-after-storing", "500-after-storing"])
def test_a_slack_post_whose_answer_is_lost_reaches_the_channel_once(tmp_path, slack, lost):
    live = start_live(db_url=f"sqlite:///{tmp_path / 'tx.db'}", slack_token=SLACK_TOKEN, slack_channel="#alerts",
                      slack_base_url=slack.base_url, group_window_s=0)
    try:
        slack.script("chat.postMessage", lost)
        with live.client() as c:
            assert c.post("/api/v1/ingest", content=_nan_loss("lost-answer"), headers=JSON).status_code == 200
        _wait(lambda: slack.top_level(ALERTS), what="the diagnosis posted")
        time.sleep(3)  # room for the retries (0.5 s, then 1 s) a lost answer used to bring
        assert len(slack.top_level(ALERTS)) == 1
        assert len(slack.calls("chat.postMessage")) == 1  # the lookup before the retry found it
    finally:
        live.stop()


# -- 3. An empty secret is a settings error, not "no secret" ----------------------------------------------------


@pytest.mark.parametrize("name", ["TXWATCH_TOKEN", "TXWATCH_SLACK_TOKEN", "TXWATCH_WEBHOOK_URL"])
def test_an_empty_secret_in_the_environment_is_refused_by_name(monkeypatch, name):
    monkeypatch.setenv(name, "")
    monkeypatch.setenv("TXWATCH_HOST", "0.0.0.0")
    with pytest.raises(SettingsError, match=name.removeprefix("TXWATCH_").lower() + ".*empty"):
        load_settings()


# -- 10. A point's time is bounded at ingest --------------------------------------------------------------------


@pytest.mark.parametrize("t", [1e300, -5.0, float("inf")])
def test_a_point_time_out_of_range_is_a_422_naming_the_point_and_nothing_is_stored(tmp_path, t):
    live = start_live(db_url=f"sqlite:///{tmp_path / 'tx.db'}")
    try:
        with live.client() as c:
            body = dumps(batch("times", seq=1, series={"loss": [[1, T0, 1.0], [2, t, 0.9]]}))
            r = c.post("/api/v1/ingest", content=body, headers=JSON)
            assert r.status_code == 422, r.text
            assert r.json()["details"][0]["field"] == "series.loss.1.1"
            assert "unix seconds from 0 to 1e+11" in r.json()["error"]
            assert c.get("/api/v1/runs").json()["runs"] == []
            # the same batch with a good time is taken, and reads back
            good = dumps(batch("times", seq=1, series={"loss": [[1, T0, 1.0], [2, T0 + 1, 0.9]]}))
            assert c.post("/api/v1/ingest", content=good, headers=JSON).status_code == 200
            assert [p["time"] for p in c.get("/api/v1/runs/p/times/series/loss").json()["points"]] == [T0, T0 + 1]
    finally:
        live.stop()


# -- 12. A slow dispatch is said once, not every second ---------------------------------------------------------


def test_a_slow_slack_holding_up_dispatch_is_logged_once_not_every_second(tmp_path, slack, caplog):
    live = start_live(db_url=f"sqlite:///{tmp_path / 'tx.db'}", slack_token=SLACK_TOKEN, slack_channel="#alerts",
                      slack_base_url=slack.base_url, group_window_s=0)
    try:
        slack.script("chat.postMessage", Reply(perform=True, delay_s=5.5))  # Slack answers, but slowly
        with caplog.at_level(logging.WARNING), live.client() as c:
            assert c.post("/api/v1/ingest", content=_nan_loss("slow-slack"), headers=JSON).status_code == 200
            _wait(lambda: slack.calls("chat.postMessage"), what="the post")
            time.sleep(6.5)
        skipped = [r for r in caplog.records if "maximum number of running instances" in r.getMessage()]
        assert len(skipped) == 1, [r.getMessage() for r in skipped]  # the dispatch job overlapped ~5 times
        assert len(slack.top_level(ALERTS)) == 1
    finally:
        live.stop()


# -- 7. No other site gets in through the user's browser --------------------------------------------------------


def test_a_page_on_another_site_can_neither_write_nor_read_runs_on_the_loopback_default(tmp_path):
    live = start_live(db_url=f"sqlite:///{tmp_path / 'tx.db'}")
    try:
        body = dumps(batch("mine", seq=1, series={"loss": [[1, T0, 1.0]]}))
        # What a page on evil.example can send without a preflight: a text/plain POST from its origin.
        r = httpx.post(live.url + "/api/v1/ingest", content=body, timeout=10,
                       headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
        assert r.status_code == 403 and "cross-site" in r.json()["error"]
        # Without the Origin (an old browser, a form), still no: ingest takes JSON only.
        r = httpx.post(live.url + "/api/v1/ingest", content=body, timeout=10, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and "application/json" in r.json()["error"]
        # DNS rebinding: evil.example now resolves to 127.0.0.1; the browser sends its name as the Host.
        for path, host in (("/api/v1/runs", "evil.example:8642"), ("/", "evil.example"),
                           ("/api/v1/runs", "127.0.0.1.evil.example")):
            r = httpx.get(live.url + path, headers={"Host": host}, timeout=10)
            assert r.status_code == 403 and "evil.example" in r.json()["error"], path
        with live.client() as c:
            assert c.get("/api/v1/runs").json()["runs"] == []  # nothing of the above was stored
            # The user's own clients: the hooks (JSON, no Origin) and the web page (same-origin) are served.
            assert c.post("/api/v1/ingest", content=body, headers=JSON).status_code == 200
            r = c.get("/api/v1/runs", headers={"Origin": live.url, "Host": "localhost"})
            assert r.status_code == 200 and r.json()["runs"][0]["name"] == "mine"
            assert c.get("/api/v1/runs", headers={"Host": "[::1]:8642", "Origin": "http://127.0.0.2"}).status_code == 200
    finally:
        live.stop()


def test_with_a_token_other_names_are_served(tmp_path):
    live = start_live(db_url=f"sqlite:///{tmp_path / 'tx.db'}", token="s3cret-token")
    try:
        r = httpx.get(live.url + "/api/v1/runs", headers={"Host": "txwatch.example.com",
                                                         "Authorization": "Bearer s3cret-token"}, timeout=10)
        assert r.status_code == 200
    finally:
        live.stop()


# -- 2. Text Python could not decode (a non-UTF-8 file name) still arrives ---------------------------------------


def test_a_non_utf8_file_name_in_the_config_and_the_crash_reaches_the_collector(tmp_path):
    import os

    import torch
    import txwatch_hooks

    data = tmp_path / "data"
    data.mkdir()
    (data / os.fsdecode(b"caf\xe9.bin")).write_bytes(b"")  # Latin-1 bytes: os.listdir gives 'caf\udce9.bin'
    [name] = os.listdir(data)
    assert "\udce9" in name
    live = start_live(db_url=f"sqlite:///{tmp_path / 'tx.db'}")
    try:
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.raises(FileNotFoundError):
            with txwatch_hooks.watch(model, opt, run="latin1", project="p", endpoint=live.url, config={"files": [name]},
                                     spool_dir=tmp_path / "spool", system_interval_s=0, crash_hooks=False,
                                     schedule_delay_s=0.05) as monitor:
                for _ in range(3):
                    model(torch.randn(2, 4)).sum().backward()
                    opt.step()
                    opt.zero_grad()
                    monitor.log(loss=1.0)
                raise FileNotFoundError(f"cannot read {data / name}")
        with live.client() as c:
            run = _wait(lambda: (r := c.get("/api/v1/runs/p/latin1")).status_code == 200 and r.json(), what="the run")
            assert run["config"] == {"files": ["caf\ufffd.bin"]}
            assert run["status"] == "crashed"
            _wait(lambda: c.get("/api/v1/diagnoses", params={"run": "p/latin1", "rule": "run-crashed"})
                  .json()["diagnoses"], what="run-crashed")
    finally:
        live.stop()


def test_a_lone_surrogate_that_still_arrives_is_a_422_naming_the_field(tmp_path):
    live = start_live(db_url=f"sqlite:///{tmp_path / 'tx.db'}")
    try:
        body = dumps(batch("old-hooks", seq=1, run_info={"host": "gpu-1", "config": {"path": "caf\udce9.bin"}}))
        assert b"\\udce9" in body  # what an older txwatch-hooks sent
        with live.client() as c:
            r = c.post("/api/v1/ingest", content=body, headers=JSON)
            assert r.status_code == 422, r.text
            assert [d["field"] for d in r.json()["details"]] == ["run_info.config.path"]
            assert "not valid Unicode" in r.json()["error"]
    finally:
        live.stop()


# -- 5. A batch the collector finds too large is split, not dropped ----------------------------------------------


def _watch(live, tmp_path, run: str, **options):
    import torch
    import txwatch_hooks

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    values = {"spool_dir": tmp_path / "spool", "system_interval_s": 0, "crash_hooks": False, "heartbeat_s": 60.0,
              "schedule_delay_s": 0.05, "export_timeout_s": 5.0, **options}
    return txwatch_hooks.watch(model, opt, run=run, project="p", endpoint=live.url, **values)


def test_a_batch_over_the_collectors_size_limit_is_sent_in_halves_and_every_point_arrives(tmp_path):
    live = start_live(db_url=f"sqlite:///{tmp_path / 'tx.db'}", max_body_bytes=4096)
    try:
        monitor = _watch(live, tmp_path, "big-batches", schedule_delay_s=60.0, max_batch_size=10_000)
        for step in range(1, 61):  # 600 points in one batch: ~20 kB against a 4 kB limit
            monitor.log(step=step, **{f"m{i}": step + i / 10 for i in range(10)})
        assert monitor.close(30)
        assert sum(monitor.dropped.values()) == 0, monitor.dropped
        with live.client() as c:
            for i in (0, 9):
                pts = c.get(f"/api/v1/runs/p/big-batches/series/m{i}").json()["points"]
                assert [p["step"] for p in pts] == list(range(1, 61))
            assert c.get("/api/v1/runs/p/big-batches").json()["status"] == "finished"
    finally:
        live.stop()


# -- 4. PostgreSQL stops answering: every request still answers, and nothing is lost -----------------------------


@pytest.mark.postgres
def test_a_stalled_postgresql_gets_prompt_answers_and_every_batch_stored_once_it_is_back(pg_url, tmp_path):
    import threading

    from sqlalchemy.engine import make_url

    from tests.faults.stall_proxy import StallingProxy

    url = make_url(pg_url)
    with StallingProxy((url.host, url.port)) as proxy:
        live = start_live(db_url=url.set(port=proxy.port).render_as_string(hide_password=False), db_timeout_s=2,
                          ingest_max_in_flight=8)
        try:
            bodies = [dumps(batch("stalled", seq=s, series={"loss": [[s, T0 + s, 1.0 / s]]})) for s in range(1, 15)]
            with live.client() as c:
                assert c.post("/api/v1/ingest", content=bodies[0], headers=JSON).status_code == 200
                monitor = _watch(live, tmp_path, "hooked", export_timeout_s=3.0)
                assert monitor.flush(10)  # its run exists; from now on it sends while the database is away
                proxy.stall()
                answers: list[tuple[int, float, str | None]] = []

                def send(body: bytes) -> None:
                    t = time.monotonic()
                    r = httpx.post(live.url + "/api/v1/ingest", content=body, headers=JSON, timeout=60)
                    answers.append((r.status_code, time.monotonic() - t, r.headers.get("retry-after")))

                senders = [threading.Thread(target=send, args=(b,)) for b in bodies[1:]]
                senders[0].start()  # alone: its thread takes the turn to write, and waits on the database
                time.sleep(0.5)
                for t in senders[1:]:
                    t.start()
                for step in range(1, 6):
                    monitor.log(step=step, loss=1.0 / step)
                time.sleep(0.5)
                t = time.monotonic()
                metrics = c.get("/metrics")
                assert metrics.status_code == 200 and time.monotonic() - t < 6
                t = time.monotonic()
                ready = c.get("/readyz")
                assert ready.status_code == 503 and "not answering" in ready.json()["detail"]
                assert time.monotonic() - t < 6
                assert c.get("/healthz").status_code == 200
                t = time.monotonic()
                assert c.get("/").status_code == 200  # the web page itself needs no database
                runs = c.get("/api/v1/runs")  # its data does: a prompt 503, not a hang
                assert runs.status_code == 503 and runs.headers["retry-after"] and time.monotonic() - t < 6
                for t in senders:
                    t.join(30)
                assert len(answers) == 13 and sorted({a[0] for a in answers}) == [429, 503], answers  # 8 in flight
                # promptly (at most 2 x 2 s, and room for a busy machine), with Retry-After
                assert all(a[1] < 8 and a[2] for a in answers), answers
                assert monitor.flush(2) is False and sum(monitor.dropped.values()) == 0  # the hooks spool

                proxy.resume()
                for body in bodies[1:]:  # sent again, as the hooks do: stored once
                    _wait(lambda: c.post("/api/v1/ingest", content=body, headers=JSON).status_code == 200,
                          what="the batch taken after the database came back")
                assert monitor.close(30) and sum(monitor.dropped.values()) == 0
                pts = c.get("/api/v1/runs/p/stalled/series/loss").json()["points"]
                assert [p["step"] for p in pts] == list(range(1, 15))
                hooked = c.get("/api/v1/runs/p/hooked/series/loss").json()["points"]
                assert [p["step"] for p in hooked] == [1, 2, 3, 4, 5]
                assert c.get("/readyz").status_code == 200
        finally:
            proxy.resume()
            live.stop()


# -- 11. The SQLite disk fills up: readiness and ingest say so ---------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only; skipped where it cannot be mounted)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("could not mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(path) -> None:
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_under_sqlite_is_said_by_readyz_and_by_ingest_and_nothing_is_lost(small_disk):
    live = start_live(db_url=f"sqlite:///{small_disk / 'tx.db'}")
    try:
        with live.client() as c:
            assert c.post("/api/v1/ingest", content=dumps(batch("full", seq=0)), headers=JSON).status_code == 200
            _fill(small_disk / "filler")
            series = {f"m{i}": [[s, T0 + s, float(s)] for s in range(200)] for i in range(20)}
            big = dumps(batch("full", seq=1, series=series))
            r = c.post("/api/v1/ingest", content=big, headers=JSON)
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert "disk holding the database is full" in r.json()["error"] and str(small_disk) in r.json()["error"]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "disk holding the database is full" in ready.json()["detail"]
            assert c.get("/healthz").status_code == 200

            (small_disk / "filler").unlink()  # someone frees space; the hooks send the batch again
            assert c.post("/api/v1/ingest", content=big, headers=JSON).status_code == 200
            assert c.get("/readyz").status_code == 200
            assert len(c.get("/api/v1/runs/p/full/series/m19").json()["points"]) == 200
    finally:
        live.stop()


# -- 6. A job that ended while the collector was away: its spool is delivered by the next job --------------------


def test_a_spool_left_by_a_job_that_ended_while_the_collector_was_away_is_delivered_by_the_next_one(tmp_path):
    import os

    from txwatch_hooks.testing import free_port

    port = free_port()

    class Away:  # where the jobs send while the collector is down: the same address it will come back on
        url = f"http://127.0.0.1:{port}"

    def job(run: str, steps: int, export_timeout_s: float = 0.3):
        monitor = _watch(Away, tmp_path, run, export_timeout_s=export_timeout_s)
        for step in range(1, steps + 1):
            monitor.log(step=step, loss=1.0 / step)
        return monitor

    def ended_away(run: str, steps: int) -> None:
        monitor = job(run, steps)
        assert monitor.close(1) is False
        _wait(lambda: not monitor._transport._thread.is_alive(), what="the job's end")  # the process is gone

    ended_away("ended-away", 10)  # the job ends; its batches stay in the spool
    left = tmp_path / "spool" / "p" / "ended-away" / "rank0"
    assert [f for f in os.listdir(left) if f.endswith(".json")]
    ended_away("long-ago", 4)  # another, whose batches will be too old to send
    old = tmp_path / "spool" / "p" / "long-ago" / "rank0"
    stale = [old / f for f in os.listdir(old) if f.endswith(".json")]
    week_and_a_day = time.time() - 8 * 24 * 3600
    for f in stale:
        os.utime(f, (week_and_a_day, week_and_a_day))
    expired = sum(int(n) for f in stale for n in f.name.removesuffix(".json").split("-")[1:])

    live = start_live(db_url=f"sqlite:///{tmp_path / 'tx.db'}", port=port)
    try:
        nxt = job("next-job", 3, export_timeout_s=5.0)
        assert nxt.close(30)
        with live.client() as c:
            pts = c.get("/api/v1/runs/p/ended-away/series/loss").json()["points"]
            assert [p["step"] for p in pts] == list(range(1, 11))
            assert c.get("/api/v1/runs/p/ended-away").json()["status"] == "finished"
            assert c.get("/api/v1/runs/p/long-ago").status_code == 404  # deleted, not sent
            assert not left.exists() and not old.exists()  # delivered, or too old: either way, gone
            assert nxt.dropped.get("orphan_expired") == expired
            line = (f'txwatch_run_client_dropped{{project="p",reason="orphan_expired",run="next-job"}} '
                    f'{float(expired)}')
            assert line in c.get("/metrics").text
    finally:
        live.stop()
