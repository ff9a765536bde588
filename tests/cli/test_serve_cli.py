"""`txwatch serve` and `txwatch db` as a user runs them."""

from __future__ import annotations

from tests.cli.test_query import txwatch


def test_settings_errors_are_one_line_and_exit_2(tmp_path):
    r = txwatch("serve", "--host", "0.0.0.0", "--db", str(tmp_path / "t.db"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "without an ingest token" in r.stderr and "TXWATCH_TOKEN" in r.stderr
    r = txwatch("serve", "--port", "70000", "--db", str(tmp_path / "t.db"))
    assert r.returncode == 2 and "port" in r.stderr and r.stderr.count("\n") == 1
    r = txwatch("serve", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml" in r.stderr


def test_bad_rule_folder_is_named(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text("rules:\n  - id: x\n    when: [[[\n")
    r = txwatch("serve", "--port", "0", "--db", str(tmp_path / "t.db"), "--rules", str(rules))
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "Traceback" not in r.stderr


def test_db_upgrade_and_current(db_url):
    r = txwatch("db", "current", "--db", db_url)
    assert r.returncode == 1 and "txwatch db upgrade" in r.stdout
    r = txwatch("db", "upgrade", "--db", db_url)
    assert r.returncode == 0 and "upgraded empty -> 0001" in r.stdout
    assert "already at" in txwatch("db", "upgrade", "--db", db_url).stdout
    r = txwatch("db", "current", "--db", db_url)
    assert r.returncode == 0 and "(current)" in r.stdout
