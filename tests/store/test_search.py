"""The run filter language: what it matches, and one-line errors that name the column."""

import math

import pytest

from txwatch.store.search import FilterError, matches, parse, sql_tests

RUN = {"name": "sweep-3", "project": "lm", "status": "crashed", "steps": 1200, "last_loss": 2.5,
       "tags": ["baseline", "sweep"], "started": "2026-12-01T10:00:00+00:00", "host": "gpu-1",
       "config": {"lr": 3e-3, "optimizer": {"name": "adamw", "betas": [0.9, 0.95]}, "amp": True, "note": None},
       "info": {"world_size": 8}, "error": {"type": "RuntimeError", "message": "boom"}}


@pytest.mark.parametrize("text, expected", [
    ("config.lr > 1e-3 and tags has 'sweep' and status == 'crashed'", True),
    ("config.lr > 1e-2", False),
    ("config.lr >= 3e-3 and config.lr <= 0.003", True),
    ("config.optimizer.name == \"adamw\"", True),
    ("config.optimizer.betas has 0.95", True),
    ("config.amp == true and not config.amp == false", True),
    ("config.note == null", True),
    ("config.missing == null", False),  # absent is not null
    ("config.missing != 1", False),  # nor anything else
    ("status in ['crashed', 'stalled'] or last_loss > 10", True),
    ("(status == 'finished' or steps > 1000) and info.world_size == 8", True),
    ("name has 'sweep'", True),  # a text holds the part
    ("tags has 'prod'", False),
    ("started >= '2026-12-01' and started < '2026-12-02'", True),
    ("error.type == 'RuntimeError'", True),
    ("config.lr > 'abc'", False),  # another type never matches
    ("not (status == 'crashed')", False),
    ("steps == 1200.0 and steps != -1", True),
])
def test_matches(text, expected):
    assert matches(parse(text), RUN) is expected


def test_nan_never_compares():
    assert not matches(parse("last_loss > 0"), {**RUN, "last_loss": math.nan})
    assert not matches(parse("last_loss < 0"), {**RUN, "last_loss": math.nan})


@pytest.mark.parametrize("text, error", [
    ("stauts == 'crashed'", "unknown field 'stauts' at column 1; use one of name, project, status"),
    ("config.lr > 1e-3 and tag has 'x'", "unknown field 'tag' at column 22"),
    ("config > 1", "unknown field 'config' at column 1"),
    ("status = 'crashed'", "bad filter at column 8: unexpected '='"),
    ("config.lr > ", "bad filter at column 13: it ends too early"),
    ("status == 'crashed", "bad filter at column 11: unexpected \"'\" (a text needs its closing quote)"),
    ("status == crashed", "bad filter at column 11: unexpected 'crashed'; expected"),
    ("config.lr > 1 && steps > 2", "bad filter at column 15: unexpected '&'"),
    ("__import__('os').system('x')", "bad filter at column 11"),
    ("", "empty filter"),
])
def test_bad_filters_say_where_in_one_line(text, error):
    with pytest.raises(FilterError) as info:
        parse(text)
    assert error in str(info.value) and "\n" not in str(info.value)


def test_the_plain_column_tests_of_a_top_level_and_go_to_sql():
    tests = sql_tests(parse("status == 'crashed' and config.lr > 1 and project in ['a', 'b'] and steps == 3"))
    assert [(t.field, t.op) for t in tests] == [("status", "=="), ("project", "in"), ("steps", "==")]
    assert sql_tests(parse("status == 'crashed' or steps == 3")) == []  # an or: Python only
    assert sql_tests(parse("status == 3")) == []  # a number for a text column: no SQL, and no match


def test_list_runs_filters_in_both_databases_and_tags_change(db_url):
    from tests.collector.batches import T0, batch, steps
    from txwatch.ingest.queue import Collector
    from txwatch.wire.batch import Batch
    from txwatch.store import queries, tags
    from txwatch.store.db import make_engine, session_factory, upgrade

    engine = make_engine(db_url)
    upgrade(engine)
    sessions = session_factory(engine)
    try:
        for i in range(12):  # more than one page when FILTER_PAGE is small
            info = {"started": T0 + i, "config": {"lr": i * 1e-3}, "tags": ["even"] if i % 2 == 0 else []}
            Collector(sessions).ingest(Batch.model_validate(batch(run=f"r{i}", project="p" if i < 10 else "q",
                                                                  run_info=info, series=steps("loss", 1, 3))))
        with sessions() as s:
            got = queries.list_runs(s, where="config.lr > 2.5e-3 and tags has 'even' and project == 'p'")
            assert [r["name"] for r in got] == ["r8", "r6", "r4"]
            queries.FILTER_PAGE, saved = 3, queries.FILTER_PAGE
            try:
                assert [r["name"] for r in queries.list_runs(s, where="steps in [2, 5]", limit=4)] == [
                    "r11", "r10", "r9", "r8"]
            finally:
                queries.FILTER_PAGE = saved
            run, _ = queries.get_run(s, "p", "r1")
            assert tags.change(s, run.id, add=["new", "x"], remove=["x"]) == ["new"]
        with sessions() as s:
            assert [r["name"] for r in queries.list_runs(s, where="tags has 'new'")] == ["r1"]
    finally:
        engine.dispose()
