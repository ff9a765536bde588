"""Benchmark: a run with 1M points per series opens in the web page in under a second.

    .venv/bin/python benchmarks/web_page.py                 # 1M points per series (builds a database first)
    .venv/bin/python benchmarks/web_page.py --points 200000 --repeats 5

It stores two runs in a fresh SQLite database through the collector core (no rules, to build it quickly): the
candidate with ``--points`` points in each of loss, val_loss, lr/0, grad_norm_total, update_ratio_max,
step_time, data_wait_share, cpu_util and rss, plus per-layer grad_norm/update_ratio series for 12 layers (one
sample every 10 steps), and a baseline with 1,000 points per series and the same shape. It serves them with the
real app (uvicorn on 127.0.0.1, port 0) and opens each run page in Debian's headless Chromium, baseline and
candidate interleaved, timing navigation start -> every chart drawn (the page sets ``data-load-ms`` when its
last chart is drawn). It prints the medians, the candidate/baseline ratio, and whether the target holds.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_MS = 1000.0
LAYERS = [f"blocks.{i // 2}.{'attn' if i % 2 == 0 else 'mlp'}.weight" for i in range(12)]
SCALARS = ["loss", "lr/0", "grad_norm_total", "update_ratio_max", "step_time", "data_wait_share", "cpu_util", "rss"]
CHUNK = 100_000  # points per series per batch: the wire format's limit
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def _value(name: str, s: int) -> float:
    if name == "loss":
        return 3.0 * math.exp(-s / 2e5) + 0.05 * math.sin(s / 37.0) + 0.3
    if name == "val_loss":
        return 3.0 * math.exp(-s / 2e5) + 0.4
    if name.startswith("lr/"):
        return 3e-4 * min(1.0, s / 2000)
    if name == "grad_norm_total":
        return 0.8 + 0.2 * math.sin(s / 101.0)
    if name == "update_ratio_max" or name.startswith("update_ratio/"):
        return 1e-3 * (1.2 + math.sin(s / 53.0))
    if name == "step_time":
        return 0.12 + 0.01 * math.sin(s / 7.0)
    if name == "data_wait_share":
        return 0.05 + 0.02 * math.sin(s / 11.0)
    if name == "cpu_util":
        return 85.0 + 5 * math.sin(s / 13.0)
    if name == "rss":
        return 2.0e9 + 10.0 * s
    return 10 ** (-3 + (hash(name) % 7) / 3) * (1.1 + math.sin(s / 17.0))  # grad_norm/<layer>


def store_run(collector, run: str, points: int) -> int:
    """Ingest one run of ``points`` steps in wire-format batches; returns the number of points stored."""
    from txwatch.wire.batch import Batch

    t0 = 1.7e9
    seq, total = 0, 0
    for start in range(0, points, CHUNK):
        steps = range(start, min(points, start + CHUNK))
        series = {n: [(s, t0 + s * 0.1, _value(n, s)) for s in steps] for n in SCALARS}
        series["val_loss"] = [(s, t0 + s * 0.1, _value("val_loss", s)) for s in steps if s % 100 == 0]
        for layer in LAYERS:
            for metric in ("grad_norm", "update_ratio"):
                name = f"{metric}/{layer}"
                series[name] = [(s, t0 + s * 0.1, _value(name, s)) for s in steps if s % 10 == 0]
        body = {"schema_version": 1, "project": "bench", "run": run, "seq": seq, "series": series,
                "run_info": {"config": {"lr": 3e-4, "points": points}} if seq == 0 else None,
                "events": [{"kind": "start", "time": t0}] if seq == 0 else []}
        if start + CHUNK >= points:
            body["events"].append({"kind": "end", "time": t0 + points * 0.1, "step": points - 1, "status": "finished"})
        result = collector.ingest(Batch.model_validate(body))
        total += result.points
        seq += 1
    return total


def build_database(url: str, points: int) -> None:
    from txwatch.ingest.queue import Collector
    from txwatch.store.db import make_engine, session_factory, upgrade

    engine = make_engine(url)
    upgrade(engine)
    collector = Collector(session_factory(engine))
    for run, n in (("baseline-1k", 1000), (f"candidate-{points}", points)):
        t = time.perf_counter()
        stored = store_run(collector, run, n)
        print(f"stored {run}: {stored:,} points in {time.perf_counter() - t:.1f} s", flush=True)
    engine.dispose()


class Tab:
    """A browser tab. ``cold``: a fresh browser context per load (empty cache, new renderer: a link opened
    from Slack in a new browser). Warm: one tab that loads the page again and again with the scripts and style
    sheets in its cache (they are versioned and immutable); the API is never cached (what clicking a run in
    the runs list costs)."""

    def __init__(self, browser, cold: bool, warm_up_url: str):
        self.browser, self.cold = browser, cold
        if not cold:
            self._open()
            self.page.goto(warm_up_url)
            self.page.wait_for_selector("body[data-loaded], body[data-error]", timeout=60_000)

    def _open(self):
        self.context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.send("Performance.enable")
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _thread_ms(self) -> float:
        # ThreadTime: CPU time of the page's main thread (script, style, layout, canvas), not wall-clock time.
        metrics = {m["name"]: m["value"] for m in self.cdp.send("Performance.getMetrics")["metrics"]}
        return metrics.get("ThreadTime", float("nan")) * 1000

    def load(self, url: str) -> tuple[float, float, float, float]:
        """(ms to the first screen's charts drawn, ms to every chart drawn, from navigation start; ms of
        page main-thread CPU; ms of CPU in this process: the collector serving it, plus this script's small
        share). The CPU figures hardly depend on how busy the machine is; the wall-clock ones do."""
        if self.cold:
            self._open()
        page = self.page
        thread0, cpu0 = self._thread_ms(), time.process_time()
        page.goto(url)
        page.wait_for_selector("body[data-load-ms], body[data-error]", timeout=60_000)
        served_cpu = (time.process_time() - cpu0) * 1000
        thread = self._thread_ms() - (0.0 if self.cold else thread0)
        err = page.evaluate("document.body.dataset.error")
        first = float(page.evaluate("document.body.dataset.firstMs || 'nan'"))
        every = float(page.evaluate("document.body.dataset.loadMs || 'nan'"))
        if self.cold:
            self.context.close()
        if err or self.errors:
            raise RuntimeError(f"page failed: {err or self.errors}")
        return first, every, thread, served_cpu

    def close(self):
        if not self.cold:
            self.context.close()


FIRST_SCREEN = ["", "/series", "/series/loss?max_points=2000", "/series/val_loss?max_points=2000",
                "/series/lr%2F0?max_points=2000", "/series/grad_norm_total?max_points=2000"]


def server_ms(base_url: str, run: str) -> float:
    """The first screen's API reads for ``run``, one after another (what the server spends on them), in ms."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=30) as client:
        t = time.perf_counter()
        for path in FIRST_SCREEN:
            client.get(f"/api/v1/runs/bench/{run}{path}").raise_for_status()
        client.get("/api/v1/diagnoses", params={"project": "bench", "run": run}).raise_for_status()
        return (time.perf_counter() - t) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1_000_000, help="points per series in the candidate run")
    ap.add_argument("--repeats", type=int, default=7, help="page loads of each run, interleaved")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--db", help="SQLite file to keep the runs in (built when missing, reused when present)")
    ap.add_argument("--serve", action="store_true", help="build, then serve the runs until Ctrl-C (to look at)")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from tests.live import start_live  # the same live daemon the browser tests use

    with tempfile.TemporaryDirectory(prefix="txwatch-bench-web-") as tmp:
        path = Path(args.db) if args.db else Path(tmp) / "bench.db"
        url = f"sqlite:///{path.resolve()}"
        if not path.exists():
            build_database(url, args.points)
        collector = start_live(url, builtin_rules=False)
        if args.serve:
            print(f"serving {collector.url}/runs/bench/candidate-{args.points} (Ctrl-C to stop)", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                collector.stop()
                return 0
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                base = f"{collector.url}/runs/bench/baseline-1k"
                cand = f"{collector.url}/runs/bench/candidate-{args.points}"
                times: dict[str, list[tuple[float, ...]]] = {}
                served: dict[str, list[float]] = {"baseline": [], "candidate": []}
                for mode in ("cold", "warm"):
                    tab = Tab(browser, cold=mode == "cold", warm_up_url=base)
                    tab.load(base)  # warm up the browser and the database caches
                    tab.load(cand)
                    times[f"{mode} baseline"], times[f"{mode} candidate"] = [], []
                    for _ in range(args.repeats):
                        times[f"{mode} baseline"].append(tab.load(base))
                        times[f"{mode} candidate"].append(tab.load(cand))
                        if mode == "cold":
                            served["baseline"].append(server_ms(collector.url, "baseline-1k"))
                            served["candidate"].append(server_ms(collector.url, f"candidate-{args.points}"))
                    tab.close()
                browser.close()
        finally:
            collector.stop()

    def med(kind: str, i: int) -> float:
        return statistics.median(t[i] for t in times[kind])

    def all_of(kind: str, i: int) -> str:
        return ", ".join(f"{t[i]:.0f}" for t in times[kind])

    print(f"run page in headless Chromium, median of {args.repeats} loads, baseline and candidate interleaved")
    for mode, what in (("cold", "new browser context each load (empty cache)"),
                       ("warm", "same tab, scripts cached, API not (as when clicking a run in the list)")):
        print(f"{mode}: {what}")
        for i, label in ((0, "opens (first screen's charts drawn)"), (1, "every chart drawn")):
            b, c = med(f"{mode} baseline", i), med(f"{mode} candidate", i)
            print(f"  {label}:")
            print(f"    baseline  {1000:>9,} points/series: {b:7.1f} ms   ({all_of(f'{mode} baseline', i)})")
            print(f"    candidate {args.points:>9,} points/series: {c:7.1f} ms   ({all_of(f'{mode} candidate', i)})")
            print(f"    ratio candidate/baseline: {c / b:.2f}x")
    print("CPU time per cold load, every chart (hardly depends on machine load): page main thread + collector:")
    for kind, n in (("cold baseline", 1000), ("cold candidate", args.points)):
        print(f"    {kind:14} {n:>9,} points/series: page {med(kind, 2):6.1f} ms + collector {med(kind, 3):6.1f} ms"
              f" = {med(kind, 2) + med(kind, 3):6.1f} ms")
    sb, sc = statistics.median(served["baseline"]), statistics.median(served["candidate"])
    print("server alone: the first screen's 7 API reads one after another (HTTP, no browser):")
    print(f"    baseline {sb:.1f} ms, candidate {sc:.1f} ms, ratio {sc / sb:.2f}x")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    cold, warm = med("cold candidate", 0), med("warm candidate", 0)
    ok = cold < TARGET_MS
    print(f"target: a {args.points:,}-point run opens in under {TARGET_MS:.0f} ms: {'PASS' if ok else 'FAIL'} "
          f"(cold {cold:.0f} ms, warm {warm:.0f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
