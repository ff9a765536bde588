"""A local stand-in for the parts of Slack txwatch talks to, for driving the real slack-sdk clients in tests.

Speaks the Web API methods ``chat.postMessage``, ``chat.update``, ``conversations.history``,
``conversations.replies``, ``conversations.list`` (JSON, form or query arguments, bearer token) and incoming
webhooks (``POST /services/...``). Keeps channels and their messages (with threads and metadata), records every
request, and can be scripted per method to answer 429 with Retry-After, 500, a slow response (the request is
still carried out: "the response was lost"), or a Slack error such as ``invalid_auth`` or ``channel_not_found``.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "xoxb-standin-0123456789-SECRETTOKEN"
WEBHOOK_PATH = "/services/T0STANDIN/B0STANDIN/webhooksecretXYZ123"


@dataclass
class Reply:
    """A scripted answer for the next request to a method.

    status/body/headers: answer with these instead of doing the work (``error="invalid_auth"`` is shorthand for
    ``{"ok": false, "error": ...}`` with HTTP 200). ``delay_s`` with ``perform=True``: do the work, then answer
    late (a client with a shorter timeout loses the response, but the message exists). With ``perform=True``,
    ``reset=True`` drops the connection (TCP reset) instead of answering, and ``status`` >= 500 answers that
    error: either way the work was done and the client cannot know it.
    """

    status: int = 200
    error: str | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    perform: bool = False
    reset: bool = False


@dataclass
class Request:
    method: str  # Slack method ("chat.postMessage") or "webhook"
    path: str
    headers: dict[str, str]
    args: dict[str, Any]
    at: float


class SlackStandin:
    """Start with ``with SlackStandin() as slack:``; point clients at ``slack.base_url`` / ``slack.webhook_url``."""

    def __init__(self, token: str = TOKEN, channels: dict[str, str] | None = None):
        self.token = token
        self.channels = channels or {"alerts": "C0ALERTS1", "oncall": "C0ONCALL1", "search": "C0SEARCH1"}
        self.messages: dict[str, list[dict[str, Any]]] = defaultdict(list)  # channel id -> messages, oldest first
        self.webhook_messages: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self._script: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.RLock()
        self._ts = time.time()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def __enter__(self) -> SlackStandin:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        threading.Thread(target=self._server.serve_forever, name="slack-standin", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{WEBHOOK_PATH}"

    # -- scripting and inspection -------------------------------------------------------------------------------

    def script(self, method: str, *replies: Reply) -> None:
        """Answer the next requests to ``method`` ("chat.postMessage", "webhook", ...) with ``replies``, in order."""
        with self._lock:
            self._script[method].extend(replies)

    def calls(self, method: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method]

    def top_level(self, channel_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages[channel_id] if not m.get("thread_ts") or m["thread_ts"] == m["ts"]]

    def thread(self, channel_id: str, ts: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages[channel_id] if m.get("thread_ts") == ts and m["ts"] != ts]

    def wait_for(self, method: str, count: int = 1, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.calls(method)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} was not called {count} time(s) within {timeout_s}s")
            time.sleep(0.02)

    # -- Slack behaviour ----------------------------------------------------------------------------------------

    def _next_ts(self) -> str:
        self._ts += 0.000100
        return f"{self._ts:.6f}"

    def _channel(self, ref: str | None) -> str | None:
        if not ref:
            return None
        if ref in self.channels.values():
            return ref
        return self.channels.get(ref.lstrip("#"))

    def handle(self, method: str, headers: dict[str, str], args: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if method == "webhook":
            message = {"ts": self._next_ts(), "text": args.get("text"), "blocks": args.get("blocks"),
                       "metadata": args.get("metadata")}
            self.webhook_messages.append(message)
            return 200, {"Content-Type": "text/plain"}, "ok"
        if headers.get("authorization") != f"Bearer {self.token}":
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        fn = getattr(self, "_m_" + method.replace(".", "_"), None)
        if fn is None:
            return 200, {}, {"ok": False, "error": "unknown_method"}
        return 200, {}, fn(args)

    def _m_chat_postMessage(self, a: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(a.get("channel"))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if not a.get("text") and not a.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        message = {"ts": ts, "text": a.get("text"), "blocks": _blocks(a.get("blocks")), "metadata": _json(a.get("metadata"))}
        if a.get("thread_ts"):
            if not any(m["ts"] == a["thread_ts"] for m in self.messages[channel]):
                return {"ok": False, "error": "thread_not_found"}
            message["thread_ts"] = a["thread_ts"]
        self.messages[channel].append(message)
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _m_chat_update(self, a: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(a.get("channel"))
        if channel is None or not channel.startswith(("C", "G")):
            return {"ok": False, "error": "channel_not_found"}
        for m in self.messages[channel]:
            if m["ts"] == a.get("ts"):
                m.update(text=a.get("text"), blocks=_blocks(a.get("blocks")), edited=True)
                return {"ok": True, "channel": channel, "ts": m["ts"], "text": m["text"]}
        return {"ok": False, "error": "message_not_found"}

    def _m_conversations_history(self, a: dict[str, Any]) -> dict[str, Any]:
        channel = a.get("channel")
        if channel not in self.channels.values():
            return {"ok": False, "error": "channel_not_found"}  # like Slack: IDs only
        oldest = float(a.get("oldest") or 0)
        msgs = [m for m in self.top_level(channel) if float(m["ts"]) > oldest]
        return {"ok": True, "messages": [self._visible(m, a) for m in reversed(msgs)], "has_more": False}

    def _m_conversations_replies(self, a: dict[str, Any]) -> dict[str, Any]:
        channel = a.get("channel")
        if channel not in self.channels.values():
            return {"ok": False, "error": "channel_not_found"}
        parent = [m for m in self.messages[channel] if m["ts"] == a.get("ts")]
        if not parent:
            return {"ok": False, "error": "thread_not_found"}
        msgs = parent + self.thread(channel, a["ts"])
        return {"ok": True, "messages": [self._visible(m, a) for m in msgs], "has_more": False}

    def _m_conversations_list(self, a: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "channels": [{"id": cid, "name": name} for name, cid in self.channels.items()],
                "response_metadata": {"next_cursor": ""}}

    @staticmethod
    def _visible(m: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in m.items() if k != "metadata"}
        if str(a.get("include_all_metadata")).lower() in ("1", "true") and m.get("metadata"):
            out["metadata"] = m["metadata"]
        return out


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _blocks(value: Any) -> Any:
    return _json(value)


class _Handler(BaseHTTPRequestHandler):
    standin: SlackStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        st = self.standin
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        args: dict[str, Any] = {k: v[-1] for k, v in parse_qs(url.query).items()}
        ctype = self.headers.get("Content-Type", "")
        if raw and "json" in ctype:
            args.update(json.loads(raw))
        elif raw:
            args.update({k: v[-1] for k, v in parse_qs(raw.decode()).items()})
        if url.path.startswith("/services/"):
            method = "webhook"
        elif url.path.startswith("/api/"):
            method = url.path[len("/api/"):]
        else:
            return self._send(404, {}, "not found")
        headers = {k.lower(): v for k, v in self.headers.items()}
        with st._lock:
            st.requests.append(Request(method, url.path, headers, args, time.time()))
            reply = st._script[method].popleft() if st._script[method] else None
        if method == "webhook" and url.path != WEBHOOK_PATH:
            return self._send(404, {"Content-Type": "text/plain"}, "no_service")
        if reply is not None and not reply.perform:
            if reply.delay_s:
                st._stop.wait(reply.delay_s)
            if reply.error is not None:
                return self._send(reply.status, reply.headers, {"ok": False, "error": reply.error})
            body = reply.body if reply.body is not None else ({"ok": False, "error": "internal_error"} if reply.status >= 500 else {"ok": True})
            return self._send(reply.status, reply.headers, body)
        with st._lock:
            status, headers_out, body = st.handle(method, headers, args)
        if reply is not None and reply.delay_s:
            st._stop.wait(reply.delay_s)  # the work is done; the answer comes too late for the client
        if reply is not None and reply.reset:
            return self._reset()
        if reply is not None and reply.status >= 500:
            return self._send(reply.status, reply.headers, {"ok": False, "error": "internal_error"})
        self._send(status, headers_out, body)

    def _reset(self) -> None:
        """Drop the connection with a TCP reset (SO_LINGER 0), as a proxy or a load balancer losing it would."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _send(self, status: int, headers: dict[str, str], body: Any) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        try:
            self.send_response(status)
            if "Content-Type" not in headers:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)
