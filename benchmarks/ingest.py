"""Collector ingest and read benchmark: one command, figures and ratios.

    .venv/bin/python benchmarks/ingest.py            # everything (about 3 minutes on 2 cores)
    .venv/bin/python benchmarks/ingest.py --quick    # shorter runs

Measures, each against a baseline in the same run:
1. sustained ingest through HTTP (`txwatch serve` on SQLite, then PostgreSQL) with batched clients,
   against the in-process path (Collector.ingest on the same database), in interleaved rounds;
2. 100 concurrent runs each sending one batch per second: ingest latency p50/p99, on an empty database and
   on the one the first part filled (millions of rows: on PostgreSQL, autovacuum and checkpoints of that
   ingest run meanwhile);
3. reading a 1M-point series downsampled to 2,000 points, against a plain SQL GROUP BY over the raw points.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from txwatch.ingest.queue import Collector  # noqa: E402
from txwatch.wire.batch import Batch  # noqa: E402
from txwatch.store.db import make_engine, session_factory, upgrade  # noqa: E402

PG_ADMIN = os.environ.get("TXWATCH_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
T0 = 1_764_393_000.0


def body(run: str, seq: int, series: int, steps: int) -> bytes:
    lo = seq * steps
    return json.dumps({
        "schema_version": 1, "run": run, "project": "bench", "seq": seq,
        "series": {f"m{i}": [[s, T0 + s, math.sin(s * 0.01 + i)] for s in range(lo, lo + steps)] for i in range(series)},
    }).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, db_url: str, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TXWATCH_")} | (extra_env or {})
        self.log = tempfile.NamedTemporaryFile(prefix="txwatch-bench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "txwatch", "serve", "--port", str(self.port),
                                      "--db", db_url, "--log-level", "warning"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"daemon did not start; see {self.log.name}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def pg_database() -> tuple[str, callable]:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"txwatch_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name, drop


# -- 1. sustained ingest --------------------------------------------------------------------------------------

def drive(prefix: str, seconds: float, clients: int, series: int, steps: int, connect) -> float:
    """Points per second stored by ``clients`` threads, each its own run, for ``seconds``. ``connect()`` gives
    a thread its ``(send(body) -> points stored, close())``."""
    # bodies built before the clock starts: enough for 800k points/s per client over ``seconds``
    per_client = max(4, int(800_000 * seconds / (series * steps)))
    names = {c: f"{prefix}-{c}-{uuid.uuid4().hex[:6]}" for c in range(clients)}  # one run per client
    bodies = {c: [body(names[c], seq, series, steps) for seq in range(per_client)] for c in range(clients)}
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(c: int):
        send, close = connect()
        try:
            for b in bodies[c]:
                if time.monotonic() >= stop:
                    return
                done[c] += send(b)
        finally:
            close()

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - start)


def http_ingest(url: str, seconds: float, clients: int, series: int, steps: int) -> float:
    """Points per second stored through HTTP (``txwatch serve``)."""

    def connect():
        h = httpx.Client(base_url=url, timeout=120)

        def send(b: bytes) -> int:
            r = h.post("/api/v1/ingest", content=b, headers={"content-type": "application/json"})
            r.raise_for_status()
            return r.json()["points"]

        return send, h.close

    return drive("http", seconds, clients, series, steps, connect)


def inprocess_ingest(collector, seconds: float, clients: int, series: int, steps: int) -> float:
    """Points per second through Collector.ingest (JSON validation included, as embedded mode does): the HTTP
    path minus HTTP."""
    return drive("inproc", seconds, clients, series, steps,
                 lambda: (lambda b: collector.ingest(Batch.model_validate_json(b)).points, lambda: None))


def sustained(db_url: str, seconds: float, series: int, steps: int, rounds: int = 3) -> dict[str, float]:
    """Points/s of the three ingest paths, interleaved: ``rounds`` rounds of each in turn, so the database
    grows alike under all three; each figure is the median of its rounds."""
    from txwatch.collector.services import build_services
    from txwatch.settings import Settings

    services = build_services(Settings(db_url=db_url, builtin_rules=False))
    collector = Collector(services.session_factory)
    with_rules, store_only = Daemon(db_url), Daemon(db_url, {"TXWATCH_BUILTIN_RULES": "false"})
    figures: dict[str, list[float]] = {"http_rules": [], "http_store": [], "inproc": []}
    try:
        for _ in range(rounds):
            figures["http_rules"].append(http_ingest(with_rules.url, seconds, 2, series, steps))
            figures["http_store"].append(http_ingest(store_only.url, seconds, 2, series, steps))
            figures["inproc"].append(inprocess_ingest(collector, seconds, 2, series, steps))
    finally:
        with_rules.stop()
        store_only.stop()
        services.close()
    return {k: statistics.median(v) for k, v in figures.items()}


# -- 2. many runs, one batch a second each -----------------------------------------------------------------

def latency(url: str, runs: int, seconds: float) -> list[float]:
    """Ingest latencies (s) of ``runs`` clients each sending one batch (20 series x 10 steps) per second.

    One asyncio loop drives every client over keep-alive connections with bodies and request heads built
    beforehand, writing HTTP/1.1 itself: the load generator shares the 2 CPUs with the daemon, and httpx's
    per-request cost (about 2 ms of CPU) showed up as latency the daemon did not cause."""
    import asyncio
    from urllib.parse import urlsplit

    n = int(seconds)
    host, port = urlsplit(url).hostname, urlsplit(url).port
    names = [f"lat-{k}-{uuid.uuid4().hex[:6]}" for k in range(runs)]  # each client is one run, batch after batch
    requests = {k: [b"POST /api/v1/ingest HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(b), b)
                    for b in (body(names[k], seq, 20, 10) for seq in range(n))]
                for k in range(runs)}
    out: list[float] = []

    async def post(conn, request: bytes) -> int:
        reader, writer = conn
        writer.write(request)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        return status

    async def client(k: int, t0: float):
        conn = await asyncio.open_connection(host, port)
        try:
            for seq in range(n):
                at = t0 + seq + k / runs  # spread the clients over each second
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                t = time.perf_counter()
                status = await post(conn, requests[k][seq])
                out.append(time.perf_counter() - t)
                if status != 200:
                    raise RuntimeError(f"ingest answered {status}")
        finally:
            conn[1].close()

    async def run_all():
        t0 = time.perf_counter() + 0.5
        await asyncio.gather(*(client(k, t0) for k in range(runs)))

    asyncio.run(run_all())
    return out


def server_latency_p99(url: str) -> float | None:
    """p99 of the daemon's own ingest latency histogram (storage only, no HTTP), upper bucket bound."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets = []
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        if fam.name == "txwatch_ingest_latency_seconds":
            buckets = [(float(s.labels["le"]), s.value) for s in fam.samples if s.name.endswith("_bucket")]
    if not buckets:
        return None
    total = buckets[-1][1]
    return next(le for le, count in buckets if count >= 0.99 * total)


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, total) CPU ticks so far, from /proc/stat: time the hypervisor gave to other guests counts in
    every wall-clock figure, so the latency parts say how much of it there was."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_since(start: tuple[int, int] | None) -> str:
    now = cpu_ticks()
    if start is None or now is None or now[1] == start[1]:
        return ""
    return f"; CPU time stolen by the hypervisor meanwhile: {100 * (now[0] - start[0]) / (now[1] - start[1]):.0f}%"


def report_latency(title: str, url: str, lat: list[float], ticks: tuple[int, int] | None = None) -> None:
    print(f"\n== {title}: 100 runs x 1 batch/s (200 points each), {len(lat)} batches{steal_since(ticks)} ==")
    print(f"latency p50 {pct(lat, .5) * 1000:7.1f} ms   p99 {pct(lat, .99) * 1000:7.1f} ms   "
          f"max {max(lat) * 1000:7.1f} ms   (target p99 < 50 ms: {'met' if pct(lat, .99) < 0.05 else 'NOT met'})")
    p99 = server_latency_p99(url)
    print(f"daemon's own latency p99 (histogram bucket): <= {p99 * 1000:.0f} ms"
          if p99 is not None else "daemon's latency histogram empty")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# -- 3. 1M-point read -------------------------------------------------------------------------------------------

def read_1m(db_url: str, url: str | None, reps: int) -> dict[str, float]:
    from sqlalchemy import text

    from txwatch.store import downsample, queries

    engine = make_engine(db_url)
    upgrade(engine)
    sf = session_factory(engine)
    c = Collector(sf)
    n, per = 1_000_000, 50_000
    for seq in range(n // per):
        c.ingest(Batch.model_validate({"schema_version": 1, "run": "million", "project": "bench", "seq": seq,
                                       "series": {"loss": [[s, T0 + s, math.sin(s / 5000) + (s % 97) / 97]
                                                           for s in range(seq * per, (seq + 1) * per)]}}))
    timings: dict[str, list[float]] = {"downsampled (rollups)": [], "baseline: SQL GROUP BY raw points": [],
                                       "HTTP GET max_points=2000": []}
    with sf() as s:
        run, _ = queries.find_run(s, "bench/million")
        series = queries.get_series(s, run, "loss")
        for _ in range(reps):
            t = time.perf_counter()
            out = downsample.series_points(s, series, 2000)
            timings["downsampled (rollups)"].append(time.perf_counter() - t)
            assert out["downsampled"] and len(out["points"]) <= 2000
            t = time.perf_counter()
            s.execute(text("SELECT step / 500, min(value), max(value) FROM points WHERE series_id = :sid "
                           "GROUP BY step / 500"), {"sid": series.id}).all()
            timings["baseline: SQL GROUP BY raw points"].append(time.perf_counter() - t)
            if url:
                t = time.perf_counter()
                r = httpx.get(url + "/api/v1/runs/bench/million/series/loss", params={"max_points": 2000}, timeout=60)
                timings["HTTP GET max_points=2000"].append(time.perf_counter() - t)
                r.raise_for_status()
    engine.dispose()
    return {k: statistics.median(v) for k, v in timings.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-pg", action="store_true")
    args = ap.parse_args()
    secs = 4.0 if args.quick else 10.0
    series, steps = 50, 1000  # 50k points per batch: a few seconds of a model with per-layer stats
    print("sustained ingest: 2 clients each, 3 interleaved rounds per path, median round")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} (other work shares them; figures are noisy)")
    tmp = Path(tempfile.mkdtemp(prefix="txwatch-bench-"))
    targets = [("sqlite", f"sqlite:///{tmp / 'bench.db'}", None)]
    if not args.skip_pg:
        pg, drop = pg_database()
        targets.append(("postgresql", pg, drop))
    try:
        for kind, db_url, _ in targets:
            print(f"\n== {kind}: sustained ingest, batches of {series * steps:,} points ==")
            rates = sustained(db_url, secs / 2, series, steps)
            http, http_store, inproc = rates["http_rules"], rates["http_store"], rates["inproc"]
            print(f"HTTP, daemon with built-in rules : {http:12,.0f} points/s")
            print(f"HTTP, daemon storing only        : {http_store:12,.0f} points/s")
            print(f"in-process (Collector.ingest)    : {inproc:12,.0f} points/s   "
                  f"ratio in-process / HTTP = {inproc / http_store:.2f}")
            if kind == "sqlite":
                print(f"target >= 200,000 points/s via HTTP: {'met' if http_store >= 200_000 else 'NOT met'} "
                      f"(storing only), {'met' if http >= 200_000 else 'NOT met'} (with rules)")

            # the same load on an empty database of the same kind, then on the one the first part filled
            fresh_url, fresh_drop = pg_database() if kind == "postgresql" else (f"sqlite:///{tmp / 'fresh.db'}", None)
            fresh = Daemon(fresh_url)
            try:
                ticks = cpu_ticks()
                report_latency(f"{kind}, empty database", fresh.url, latency(fresh.url, runs=100, seconds=secs + 5),
                               ticks)
            finally:
                fresh.stop()
                if fresh_drop:
                    fresh_drop()
            d = Daemon(db_url)
            try:
                ticks = cpu_ticks()
                report_latency(f"{kind}, the database part 1 filled", d.url,
                               latency(d.url, runs=100, seconds=secs + 5), ticks)
                res = read_1m(db_url, d.url, reps=5)
            finally:
                d.stop()
            print(f"\n== {kind}: 1,000,000-point series read as <= 2,000 points (median of 5) ==")
            for name, secs_ in res.items():
                print(f"{name:36s}: {secs_ * 1000:8.1f} ms")
            base = res["baseline: SQL GROUP BY raw points"]
            print(f"ratio baseline / rollups = {base / res['downsampled (rollups)']:.0f}x   "
                  f"(target < 100 ms: {'met' if res['HTTP GET max_points=2000'] < 0.1 else 'NOT met'} over HTTP)")
    finally:
        for _, _, drop in targets:
            if drop:
                drop()


if __name__ == "__main__":
    main()
