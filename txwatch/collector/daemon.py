"""The collector daemon: build the services, start the background jobs, serve HTTP, shut down cleanly.

SIGTERM/SIGINT (handled by uvicorn, whose handlers only set a flag): stop accepting connections, let the
requests already accepted finish (up to ``settings.shutdown_timeout_s``), stop the jobs, close the database.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
from typing import Any

import uvicorn

from txwatch.settings import Settings

log = logging.getLogger(__name__)

KEEP_ALIVE_S = 30


class Daemon:
    """``txwatch serve``: ``run()`` blocks until a signal (or ``stop()``) and returns after a clean shutdown."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.services: Any = None
        self.scheduler: Any = None
        self.server: Any = None

    def build(self) -> None:
        from txwatch.collector.app import create_app
        from txwatch.collector.scheduler import Scheduler
        from txwatch.collector.services import build_services
        from txwatch.store.db import redact

        self.services = build_services(self.settings)  # migrations applied here
        self.scheduler = Scheduler(self.services)
        app = create_app(self.services)
        config = uvicorn.Config(
            app,
            host=self.settings.host,
            port=self.settings.port,
            lifespan="on",
            access_log=False,
            log_config=None,  # the CLI configured logging; library code never does
            timeout_graceful_shutdown=int(max(1, self.settings.shutdown_timeout_s)),
            # hooks send every second or so on one connection: keep it open well past that (uvicorn's 5 s
            # default closes idle connections just as a client reuses them, under load)
            timeout_keep_alive=KEEP_ALIVE_S,
            limit_concurrency=None,
        )
        self.server = _Server(config)
        log.info("database: %s (rules: %s, alerts: %s)", redact(str(self.services.db.url)),
                 "on" if self.services.rules is not None else "off",
                 "on" if self.services.alerting is not None else "off")

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT or ``stop()``; then finish accepted requests, stop jobs, close the DB."""
        if self.server is None:
            self.build()
        # Everything built so far (modules, the app, rules, schemas) lives as long as the daemon: move it out
        # of the garbage collector's sight, or every full collection walks it again (70-110 ms pauses that
        # were the daemon's slowest ingest requests, measured with 100 runs sending a batch a second).
        gc.collect()
        gc.freeze()
        self.scheduler.start()
        restore = self._install_signal_handlers()
        try:
            self.server.run()
        finally:
            try:
                self.close()
            finally:
                restore()

    def stop(self) -> None:
        """Ask the server to shut down (as SIGTERM does); a second call forces it."""
        if self.server is not None:
            if self.server.should_exit:
                self.server.force_exit = True
            self.server.should_exit = True

    def _install_signal_handlers(self):
        """SIGTERM/SIGINT only set flags (uvicorn's loop polls them); main thread only, as Python requires."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, lambda signum, frame: self.stop())

        def restore():
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    @property
    def port(self) -> int | None:
        try:
            return self.server.servers[0].sockets[0].getsockname()[1]
        except Exception:
            return None

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        if self.services is not None:
            self.services.close()
            self.services = None
        log.info("collector stopped")


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal capture: uvicorn re-raises a captured SIGTERM after shutting
    down, which would kill the process before the daemon closes the scheduler and the database."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield
