"""Runs the demo scenarios side by side with a progress bar each, printing diagnoses as they fire."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

import torch
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from txwatch.demo.scenarios import Scenario, scenarios, train
from txwatch.store.db import make_engine, normalize_url, session_factory, upgrade
from txwatch.store.models import Diagnosis, Project, Run

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
# After training, diagnoses still in flight (the last batch, the rule engine) get this long to land.
SETTLE_S = 3.0
POLL_S = 0.25  # how often the demo looks for new diagnoses while training


@dataclass
class DemoResult:
    runs: dict[str, str] = field(default_factory=dict)  # scenario name -> run name
    diagnoses: dict[str, list[str]] = field(default_factory=dict)  # run name -> rule ids raised
    errors: dict[str, str] = field(default_factory=dict)


class DemoRunner:
    def __init__(self, console: Console, project: str, quick: bool, db_url: str | None):
        self.console = console
        self.project = project
        self.quick = quick
        self.db_url = normalize_url(db_url)
        self.engine = make_engine(self.db_url)
        upgrade(self.engine)
        self.sessions = session_factory(self.engine)
        self.result = DemoResult()
        self._seen: set[int] = set()

    def run(self) -> DemoResult:
        torch.set_num_threads(1)  # four runs share the CPU; one thread each avoids thrashing
        stamp = datetime.now().strftime("%m%d-%H%M%S")
        plan = scenarios(self.quick)
        self.console.print(Panel.fit(
            "Training a tiny GPT-style model on made-up text, four ways at once.\n"
            "txwatch watches each run and says what is going wrong, and why.",
            title="txwatch demo", border_style="blue"))
        progress = Progress(TextColumn("{task.fields[run]:<28}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:>7}"), TimeElapsedColumn(), console=self.console)
        threads = []
        with progress:
            for sc in plan:
                run = f"{sc.name}-{stamp}"
                self.result.runs[sc.name] = run
                task = progress.add_task(sc.name, total=sc.steps, run=run, loss="-")
                t = threading.Thread(target=self._train_one, args=(sc, run, progress, task),
                                     name=f"txwatch.demo.{sc.name}", daemon=True)
                threads.append(t)
                t.start()
            while any(t.is_alive() for t in threads):
                self._print_new_diagnoses()
                time.sleep(POLL_S)
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline:
                self._print_new_diagnoses()
                time.sleep(POLL_S)
        self._print_summary(plan)
        return self.result

    def _train_one(self, sc: Scenario, run: str, progress: Progress, task) -> None:
        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step, loss=f"{loss:.3f}")

        try:
            train(sc, run=run, project=self.project, on_step=on_step)
        except Exception as exc:  # a demo run failing must not hide the others
            self.result.errors[run] = f"{type(exc).__name__}: {exc}"
            progress.console.print(f"[red]run {run} failed: {exc}[/]")

    def _diagnoses(self) -> list[tuple[Diagnosis, Run]]:
        with self.sessions() as s:
            q = (select(Diagnosis, Run).join(Run, Diagnosis.run_id == Run.id).join(Project)
                 .where(Project.name == self.project, Run.name.in_(list(self.result.runs.values())))
                 .order_by(Diagnosis.id))
            return list(s.execute(q).tuples())

    def _print_new_diagnoses(self) -> None:
        for diag, run in self._diagnoses():
            self.result.diagnoses.setdefault(run.name, [])
            if diag.rule_id not in self.result.diagnoses[run.name]:
                self.result.diagnoses[run.name].append(diag.rule_id)
            if diag.id in self._seen:
                continue
            self._seen.add(diag.id)
            style = SEVERITY_STYLE.get(diag.severity, "white")
            layer = f" [dim]({diag.layer})[/]" if diag.layer else ""
            fixes = "; ".join(str(f) for f in diag.fix) if isinstance(diag.fix, list) else str(diag.fix)
            self.console.print(
                f"[{style}]{diag.severity.upper():8}[/] [bold]{run.name}[/] step {diag.first_step}: "
                f"[bold]{diag.symptom}[/]{layer} [dim]({diag.rule_id})[/]\n"
                f"         cause: {diag.cause}\n"
                f"         fix:   {fixes}\n"
                f"         why:   {diag.reason}")

    def _print_summary(self, plan: list[Scenario]) -> None:
        table = Table(title="Demo runs", show_lines=False)
        for col in ("run", "what was done to it", "status", "steps", "diagnoses"):
            table.add_column(col)
        with self.sessions() as s:
            rows = {r.name: r for r in s.scalars(select(Run).join(Project).where(Project.name == self.project))}
        for sc in plan:
            name = self.result.runs[sc.name]
            r = rows.get(name)
            raised = ", ".join(self.result.diagnoses.get(name, [])) or "[green]none[/]"
            table.add_row(name, sc.title, r.status if r else "?", str(r.steps if r else 0), raised)
        self.console.print(table)
        example = self.result.runs.get("lr-too-high", "RUN")
        self.console.print(
            "\nLook further:\n"
            f"  txwatch runs --project {self.project}\n"
            f"  txwatch show {example}\n"
            f"  txwatch diagnoses --run {example}\n"
            f"  txwatch metrics {example} loss\n"
            f"History is in {self.db_url.split(':///')[-1] if self.db_url.startswith('sqlite') else 'the database'}.")
