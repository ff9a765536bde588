"""POST /api/v1/ingest against a live daemon: stored, idempotent, faithful NaN, and every bad input named."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from tests.live import start_live
from tests.collector.batches import T0, batch, dumps, steps


def post(client: httpx.Client, body: bytes | dict, **kw) -> httpx.Response:
    data = dumps(body) if isinstance(body, dict) else body
    return client.post("/api/v1/ingest", content=data, headers={"content-type": "application/json"}, **kw)


def rejected(client: httpx.Client, reason: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for sample in fam.samples:
            if sample.name == "txwatch_batches_rejected_total" and sample.labels.get("reason") == reason:
                return sample.value
    raise AssertionError("txwatch_batches_rejected_total not exported")


def loads(r: httpx.Response):
    return json.loads(r.text)  # Python's json: NaN and Infinity literals


def test_batch_is_stored_once_and_nan_comes_back_as_nan(client):
    b = batch(series={"loss": [[1, T0, 2.0], [2, T0 + 1, math.nan], [3, T0 + 2, math.inf]]})
    r = post(client, b)
    assert r.status_code == 200 and r.json() == {"accepted": True, "duplicate": False, "points": 3}
    assert post(client, b).json() == {"accepted": True, "duplicate": True, "points": 0}
    r = client.get("/api/v1/runs/p/r/series/loss")
    assert r.status_code == 200
    assert "NaN" in r.text and "Infinity" in r.text
    pts = loads(r)["points"]
    assert [p["step"] for p in pts] == [1, 2, 3]
    assert pts[0]["value"] == 2.0 and math.isnan(pts[1]["value"]) and pts[2]["value"] == math.inf


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (b'{"schema_version": 1, "run": "r", "seq": ', 400, "(body)", "malformed JSON"),
        (b"", 400, "(body)", "empty body"),
        (b"[1, 2]", 422, "(body)", "invalid batch"),
        (batch(seq="seven"), 422, "seq", "valid integer"),
        (batch(seq=-1), 422, "seq", "greater than or equal to 0"),
        ({k: v for k, v in batch().items() if k != "run"}, 422, "run", "Field required"),
        (batch(series={"loss": [[1, T0, "high"]]}), 422, "series.loss.0.2", "valid number"),
        (batch(series={"loss": [[1, "noon", 1.0]]}), 422, "series.loss.0.1", "valid number"),
        (batch(series={"loss": [[1, T0]]}), 422, "series.loss.0.2", "[step, time, value]: this one has no value"),
        (batch(series={"loss": [[-1, T0, 1.0]]}), 422, "series.loss.0.0", "step of a [step, time, value]"),
        (batch(run="a/b"), 422, "run", "no '/'"),
        (batch(run="x" * 500), 422, "run", "1 to 200 characters"),
        (batch(project="spaces are bad"), 422, "project", "no '/' or spaces"),
        (batch(series={"bad metric name!": [[1, T0, 1.0]]}), 422, "series.bad metric name!", "metric names"),
        (batch(events=[{"kind": "explode", "time": T0}]), 422, "events.0.kind", "'start'"),
        (batch(surprise=1), 422, "surprise", "unknown field"),
        (batch(schema_version=2), 422, "schema_version", "unknown schema_version 2"),
        ({k: v for k, v in batch().items() if k != "schema_version"}, 422, "schema_version", "missing"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(client, body, status, field, words):
    r = post(client, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert words in err["error"] or any(words in d["problem"] for d in err["details"]), err
    assert field in [d["field"] for d in err["details"]], err
    assert "Traceback" not in r.text
    assert client.get("/healthz").status_code == 200  # and the daemon stays up


def test_oversized_body_is_refused_with_413(db_url):
    live = start_live(db_url=db_url, max_body_bytes=4096)
    try:
        with live.client() as c:
            before = rejected(c, "too_large")
            big = batch(series=steps("loss", 0, 1000))
            r = post(c, big)
            assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]

            # without a Content-Length (chunked): cut off while streaming, not read whole
            def chunks():
                data = dumps(big)
                for i in range(0, len(data), 1024):
                    yield data[i : i + 1024]

            r = c.post("/api/v1/ingest", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413
            assert post(c, batch(series=steps("loss", 0, 3))).status_code == 200
            assert rejected(c, "too_large") == before + 2
    finally:
        live.stop()


def test_token_is_required_when_configured_and_never_echoed(db_url):
    secret = "s3cret-token-value"
    live = start_live(db_url=db_url, token=secret)
    try:
        with live.client() as anon, live.client("wrong") as wrong, live.client(secret) as ok:
            for c in (anon, wrong):
                r = post(c, batch())
                assert r.status_code == 401 and "TXWATCH_TOKEN" in r.json()["error"]
                assert secret not in r.text
                assert c.get("/api/v1/runs").status_code == 401
            assert post(ok, batch()).status_code == 200
            assert ok.get("/api/v1/runs").json()["runs"][0]["name"] == "r"
            assert anon.get("/healthz").status_code == 200
            assert secret not in ok.get("/metrics").text
    finally:
        live.stop()
