"""A run resumed under the same name by a new process (``resume="allow"``) keeps every point: its batches are
not taken for replays. Without it, a second job under a stored name is a new run, in the local database and
through the daemon alike."""

import torch
from sqlalchemy import create_engine, select

import txwatch_hooks
from txwatch.collector.embedded import open_embedded


def _train(run: str, sender, steps: int, **kwargs) -> str:
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    if sender is not None:
        kwargs["sender"] = sender
    with txwatch_hooks.watch(model, opt, run=run, project="resume", system_interval_s=0,
                             crash_hooks=False, **kwargs) as monitor:
        for _ in range(steps):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            monitor.log(loss=loss)
    return monitor.run


def test_resumed_run_stores_the_second_process_points(db_url):
    collector = open_embedded(db_url, jobs=False)
    try:
        # each monitor closes its sender at the end, so each gets its own handle on the shared collector
        _train("resumed", open_embedded(db_url, jobs=False), 5, resume="allow")
        _train("resumed", open_embedded(db_url, jobs=False), 7, resume="allow")  # a new Monitor, as a restarted process makes
        from sqlalchemy import func, select

        from txwatch.store.models import Point, Run, Series

        with collector.services.session_factory() as s:
            count = s.scalar(select(func.count()).select_from(Point).join(Series, Point.series_id == Series.id).join(Run, Series.run_id == Run.id)
                             .where(Run.name == "resumed", Series.name == "loss"))
    finally:
        collector.close()
    assert count == 7  # steps 1..5, then 1..7 again: the second process's values overwrite, none dropped


def _stored(db_url: str) -> dict[str, str]:
    from txwatch.store.models import Run

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {r.name: r.info.get("job") for r in conn.execute(select(Run.name, Run.info))}
    finally:
        engine.dispose()


def test_a_second_job_in_the_local_database_is_a_new_run(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'local.db'}"
    monkeypatch.setenv("TXWATCH_DB_URL", url)
    assert _train("again", None, 3) == "again"  # no database file yet: nothing to continue
    assert _train("again", None, 3) == "again-2"
    assert _train("again", None, 3, resume="must") == "again"
    runs = _stored(url)
    assert set(runs) == {"again", "again-2"}
    assert runs["again"].startswith("process:") and runs["again"] != runs["again-2"]


def test_through_the_daemon_a_second_job_is_a_new_run(tmp_path):
    from tests.live import start_live

    url = f"sqlite:///{tmp_path / 'daemon.db'}"
    live = start_live(db_url=url)
    try:
        assert _train("served", None, 3, endpoint=live.url) == "served"
        assert _train("served", None, 3, endpoint=live.url) == "served-2"
        assert _train("served", None, 3, endpoint=live.url, resume="allow") == "served"
    finally:
        live.stop()
    assert set(_stored(url)) == {"served", "served-2"}
