"""A run resumed under the same name by a new process keeps every point: its batches are not taken for replays."""

import torch

import txwatch_hooks
from txwatch.collector.embedded import open_embedded


def _train(run: str, sender, steps: int) -> None:
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with txwatch_hooks.watch(model, opt, run=run, project="resume", sender=sender, system_interval_s=0,
                             crash_hooks=False) as monitor:
        for _ in range(steps):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            monitor.log(loss=loss)


def test_resumed_run_stores_the_second_process_points(db_url):
    collector = open_embedded(db_url, jobs=False)
    try:
        # each monitor closes its sender at the end, so each gets its own handle on the shared collector
        _train("resumed", open_embedded(db_url, jobs=False), 5)
        _train("resumed", open_embedded(db_url, jobs=False), 7)  # a new Monitor, as a restarted process makes
        from sqlalchemy import func, select

        from txwatch.store.models import Point, Run, Series

        with collector.services.session_factory() as s:
            count = s.scalar(select(func.count()).select_from(Point).join(Series, Point.series_id == Series.id).join(Run, Series.run_id == Run.id)
                             .where(Run.name == "resumed", Series.name == "loss"))
    finally:
        collector.close()
    assert count == 7  # steps 1..5, then 1..7 again: the second process's values overwrite, none dropped
