"""The one guard between txwatch and the training loop: internal failures are logged once and contained."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("txwatch_hooks")


class Guard:
    """Remembers which components failed; logs each failure kind once, never re-raises.

    A failed hot-path component is switched off (``disable=True``) so a broken capture does not cost an
    exception per step; transport and sampler failures leave the component on (they may be transient).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self.off: set[str] = set()
        self.failures: dict[str, int] = {}

    def fail(self, component: str, exc: BaseException, *, disable: bool = True) -> None:
        try:
            with self._lock:
                self.failures[component] = self.failures.get(component, 0) + 1
                first = component not in self._logged
                self._logged.add(component)
                if disable:
                    self.off.add(component)
            if first:
                what = "is off for the rest of this run" if disable else "will keep trying"
                log.warning(
                    "txwatch: %s failed (%s: %s); it %s. Training is not affected.",
                    component, type(exc).__name__, exc, what, exc_info=exc,
                )
        except Exception:  # logging itself failed (closed stream at shutdown...): nothing more to do
            pass

    def warn_once(self, key: str, message: str, *args: object) -> None:
        """Log a warning the first time ``key`` is seen (bad values, a missing collector...)."""
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        try:
            log.warning(message, *args)
        except Exception:
            pass

    def is_off(self, component: str) -> bool:
        return component in self.off
