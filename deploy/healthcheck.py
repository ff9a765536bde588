"""Container health check: GET a txwatch probe route on this host and exit 0 when it answers 200.

Used by the image's HEALTHCHECK (``/healthz``, liveness) and usable for readiness (``/readyz``):

    python /opt/txwatch/healthcheck.py [/healthz|/readyz]

Standard library only, so it runs in the slim image without curl. The port and bind address come from the same
TXWATCH_PORT / TXWATCH_HOST variables the daemon reads.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8642
# Docker's own --timeout kills a hung check anyway; this keeps the message ours rather than "timed out".
TIMEOUT_S = 4.0
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def probe_url(path: str, environ: dict[str, str]) -> str:
    """The URL of ``path`` on the daemon that the TXWATCH_* variables in ``environ`` describe."""
    host = environ.get("TXWATCH_HOST", "127.0.0.1").strip()
    # A daemon bound to every interface is reachable on loopback; a specific address must be asked directly.
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = environ.get("TXWATCH_PORT", "").strip() or str(DEFAULT_PORT)
    return f"http://{host}:{port}{path}"


def check(path: str = "/healthz", environ: dict[str, str] | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why) for one GET of ``path``."""
    url = probe_url(path, dict(os.environ) if environ is None else environ)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:  # noqa: S310 (fixed http URL)
            return resp.status == 200, f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:  # 503 from /readyz while the database is away
        return False, f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc.__class__.__name__}: {exc}"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    if not path.startswith("/"):
        print(f"healthcheck: the path must start with '/', got {path!r}", file=sys.stderr)
        return 2
    ok, why = check(path)
    print(("healthy: " if ok else "unhealthy: ") + why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
