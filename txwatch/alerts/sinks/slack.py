"""The Slack sink (the only module that imports slack-sdk).

Two modes: a bot token (``chat.postMessage`` / ``chat.update``: threads, resolve edits, routing to channels) or an
incoming webhook (one fixed channel, no threads: updates and resolves are posted as new messages).

Exactly once with a bot token: every message carries Slack message ``metadata`` with the dedupe keys of the
notifications it delivers. When a notification is attempted again after an attempt that may have reached Slack
(it timed out with the request sent, or the dispatcher died between posting and recording), the sink first looks
for a message with its key (``conversations.history``, or ``conversations.replies`` in the thread) and records
that one instead of posting again. The same lookup comes before each quick retry inside one attempt (a connection
reset, or a 500/503, after which the message may exist all the same): ``chat.postMessage`` goes through a client
whose only in-call retry is a 429 (Slack refused, nothing was posted), and ``_post`` retries the rest itself,
looking first. Needs ``channels:history`` (``groups:history`` for private channels); when the
lookup is refused the sink logs it once and posts (at least once). Incoming webhooks cannot be searched, so that
mode is at-least-once after a lost response.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.webhook import WebhookClient

from txwatch.alerts import blocks
from txwatch.alerts.clock import as_utc
from txwatch.alerts.ledger import Ledger
from txwatch.alerts.sinks.protocol import Claimed, Result, defer, failed, retry, sent, skipped
from txwatch.alerts.redact import SECRETS, sdk_logger

if TYPE_CHECKING:
    from txwatch.settings import Settings

log = logging.getLogger(__name__)

SLACK_TIMEOUT_S = 10.0  # one HTTP call; Slack answers in well under a second when healthy
SDK_RETRIES = 2  # retries inside one attempt (connection errors, 500/503, short rate limits); then the outbox backs off
POST_BACKOFF_S = 0.5  # a post retried inside the attempt waits this, then twice as long (slack-sdk's backoff)
INLINE_RETRY_AFTER_MAX_S = 5  # wait out a Retry-After this short inside the call; longer ones go back to the outbox
METADATA_EVENT = "txwatch_notification"
LOOKBACK_S = 300  # look for an earlier attempt's message from this long before the notification was decided
LOOKUP_PAGES = 5  # history pages (200 messages each) searched for it
CHANNEL_LIST_PAGES = 10
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")

_TOKEN_HINT = "Slack rejected the bot token ({code}): check TXWATCH_SLACK_TOKEN (a bot token, xoxb-...) and that the app is still installed"
PERMANENT = {
    "invalid_auth": _TOKEN_HINT,
    "not_authed": "no Slack token was sent (not_authed): set TXWATCH_SLACK_TOKEN",
    "token_revoked": _TOKEN_HINT,
    "token_expired": _TOKEN_HINT,
    "account_inactive": _TOKEN_HINT,
    "channel_not_found": "Slack channel {target} was not found (channel_not_found): check TXWATCH_SLACK_CHANNEL or "
    "slack_routes, and invite the app to private channels",
    "not_in_channel": "the Slack app is not in channel {target} (not_in_channel): invite it (/invite @app) or add "
    "the chat:write.public scope",
    "is_archived": "Slack channel {target} is archived (is_archived): route to another channel",
    "missing_scope": "the Slack app lacks a scope (missing_scope{needed}): add chat:write in the app's OAuth & "
    "Permissions page and reinstall it",
    "restricted_action": "the workspace does not let the app post in {target} (restricted_action)",
    "no_permission": "the Slack token may not do this (no_permission): use a bot token with chat:write",
    "msg_too_long": "Slack refused the message ({code}); please report this txwatch bug",
    "invalid_blocks": "Slack refused the message ({code}); please report this txwatch bug",
    "invalid_arguments": "Slack refused the message ({code}); please report this txwatch bug",
    "invalid_metadata_format": "Slack refused the message ({code}); please report this txwatch bug",
    # incoming-webhook answers
    "invalid_token": "Slack rejected the incoming webhook URL ({code}): check TXWATCH_SLACK_WEBHOOK_URL",
    "no_service": "the Slack incoming webhook no longer exists ({code}): create a new one and set "
    "TXWATCH_SLACK_WEBHOOK_URL",
    "no_team": "the Slack incoming webhook no longer exists ({code}): create a new one and set "
    "TXWATCH_SLACK_WEBHOOK_URL",
    "channel_is_archived": "the incoming webhook's channel is archived ({code}): create a webhook for another channel",
    "action_prohibited": "the workspace does not let this webhook post ({code})",
    "invalid_payload": "Slack refused the message ({code}); please report this txwatch bug",
    "no_text": "Slack refused the message ({code}); please report this txwatch bug",
}
TRANSIENT = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
_UNUSABLE_MESSAGE = {"message_not_found", "cant_update_message", "edit_window_closed"}
_LOOKUP_REFUSED = {"missing_scope", "not_in_channel", "channel_not_found", "no_permission"}


def retry_after_s(headers: Any) -> float | None:
    """The Retry-After header in seconds (header values may come as strings or one-item lists)."""
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == "retry-after":
            value = value[0] if isinstance(value, (list, tuple)) else value
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


class BoundedRateLimitHandler(RateLimitErrorRetryHandler):
    """slack-sdk's 429 handler (sleeps for Retry-After), but only for short waits: a long one would block the
    dispatcher, so it is returned to the outbox, which schedules the row after Retry-After."""

    def __init__(self, max_retry_count: int, max_wait_s: float):
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait_s = max_wait_s

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        wait = retry_after_s(response.headers) if response is not None else None
        return wait is None or wait <= self.max_wait_s


class SlackDeliveryError(Exception):
    """A refused incoming-webhook post (Slack answers those with an HTTP status and a short code)."""

    def __init__(self, status: int, code: str, headers: dict[str, Any]):
        super().__init__(f"HTTP {status}: {code}")
        self.status, self.code, self.headers = status, code, headers


class SlackSink:
    """Delivers notification rows to Slack. Build with a bot token, or with an incoming-webhook URL."""

    name = "slack"

    def __init__(
        self,
        *,
        token: str | None = None,
        webhook_url: str | None = None,
        base_url: str | None = None,
        timeout_s: float = SLACK_TIMEOUT_S,
        inline_retry_after_max_s: float = INLINE_RETRY_AFTER_MAX_S,
    ):
        if not token and not webhook_url:
            raise ValueError("SlackSink needs a bot token or an incoming-webhook URL")
        SECRETS.add(token)
        SECRETS.add(webhook_url)
        self.mode = "token" if token else "webhook"
        self.timeout_s = timeout_s
        handlers = [
            ConnectionErrorRetryHandler(
                max_retry_count=SDK_RETRIES, interval_calculator=BackoffRetryIntervalCalculator(backoff_factor=0.5)
            ),
            BoundedRateLimitHandler(max_retry_count=SDK_RETRIES, max_wait_s=inline_retry_after_max_s),
            ServerErrorRetryHandler(
                max_retry_count=SDK_RETRIES, interval_calculator=BackoffRetryIntervalCalculator(backoff_factor=0.5)
            ),
        ]
        logger = sdk_logger("txwatch.alerts.slack.sdk")
        self.client: WebClient | None = None
        self.webhook: WebhookClient | None = None
        self._poster: WebClient | None = None
        if token:
            kwargs: dict[str, Any] = {}
            if base_url:
                kwargs["base_url"] = base_url if base_url.endswith("/") else base_url + "/"
            self.client = WebClient(token=token, timeout=timeout_s, logger=logger, retry_handlers=handlers, **kwargs)
            # Posting is not idempotent: a reset or a 500 may come after Slack stored the message, so only a 429
            # (nothing posted) is retried in the SDK; _post retries the rest after looking for the message.
            self._poster = WebClient(token=token, timeout=timeout_s, logger=logger, retry_handlers=[handlers[1]],
                                     **kwargs)
        else:
            self.webhook = WebhookClient(url=webhook_url, timeout=timeout_s, logger=logger, retry_handlers=handlers)
        self._channel_ids: dict[str, str] = {}
        self._warned: set[str] = set()

    # -- the Sink protocol --------------------------------------------------------------------------------------

    def batches(self, rows: list[Claimed]) -> list[list[Claimed]]:
        """Fires of one run to one channel become one delivery (one grouped message); the rest go one by one."""
        groups: dict[tuple[str, int | None], list[Claimed]] = {}
        out: list[list[Claimed]] = []
        for r in rows:
            if r.kind == "fire" and r.payload.get("incident_of") and self.mode == "token":
                out.append([r])  # a reply in its incident's thread
            elif r.kind == "fire":
                groups.setdefault((r.target, r.run_id), []).append(r)
            else:
                out.append([r])
        out.extend(groups.values())
        return sorted(out, key=lambda b: min(r.id for r in b))

    def deliver(self, rows: list[Claimed], ledger: Ledger) -> dict[int, Result]:
        try:
            kind = rows[0].kind
            if kind == "fire":
                return self._fire(rows, ledger)
            handler = {"update": self._update, "resolve": self._resolve, "digest": self._digest}[kind]
            return {rows[0].id: handler(rows[0], ledger)}
        except Exception as exc:  # every failure becomes a Result; the dispatcher logs and counts it
            result = self.classify(exc, rows[0].target)
            return {r.id: result for r in rows}

    def close(self) -> None:
        """Nothing to close: slack-sdk opens a connection per request."""

    # -- deliveries ---------------------------------------------------------------------------------------------

    def _fire(self, rows: list[Claimed], ledger: Ledger) -> dict[int, Result]:
        if len(rows) == 1 and rows[0].payload.get("incident_of") and self.mode == "token":
            joined = self._join_incident(rows[0], ledger)
            if joined is not None:
                return {rows[0].id: joined}
        results: dict[int, Result] = {}
        todo = rows
        if any(r.maybe_sent for r in rows):
            found = self._find_posted(ledger, rows, thread_ts=None)
            for r in rows:
                if r.dedupe_key in found:
                    results[r.id] = sent(found[r.dedupe_key])
            todo = [r for r in rows if r.id not in results]
        if not todo:
            return results
        mention = next((r.payload.get("mention") for r in todo if r.payload.get("mention")), None)
        text, blks = blocks.group_message([r.payload for r in todo], mention)
        ref = self._post(todo, text, blks, ledger=ledger)
        ref["group"] = [r.diagnosis_id for r in todo]
        for r in todo:
            results[r.id] = sent(ref)
        return results

    def _join_incident(self, row: Claimed, ledger: Ledger) -> Result | None:
        """Post a fire as a reply in the thread of the message that opened its incident; None when that message
        is not there (silenced, failed): the fire is then a message of its own."""
        top, waiting = ledger.incident_thread(row.payload["incident_of"], row.sink, row.target)
        if top is None:
            return defer("waiting for the incident's first message to be sent") if waiting else None
        if row.maybe_sent:
            found = self._find_posted(ledger, [row], thread_ts=top["ts"], channel=top["channel"])
            if row.dedupe_key in found:
                return sent({**found[row.dedupe_key], "joined": True})
        text, blks = blocks.incident_reply(row.payload)
        ref = self._post([row], text, blks, ledger=ledger, channel=top["channel"], thread_ts=top["ts"])
        ref["joined"] = True
        return sent(ref)

    def _update(self, row: Claimed, ledger: Ledger) -> Result:
        anchor, waiting = ledger.anchor(row)
        if waiting:
            return defer("waiting for the episode's first message to be sent")
        if self.mode == "webhook" or anchor is None:
            # No thread to reply in: the first message was silenced or failed, or webhooks cannot thread.
            if row.maybe_sent and self.mode == "token":
                found = self._find_posted(ledger, [row], thread_ts=None)
                if row.dedupe_key in found:
                    return sent(found[row.dedupe_key])
            d = row.payload["diagnosis"]
            text, blks = blocks.single_message(row.payload, note=f":repeat: still firing at step {d.get('last_step')}")
            ref = self._post([row], text, blks, ledger=ledger)
            ref["group"] = [row.diagnosis_id]
            return sent(ref)
        if row.maybe_sent:
            found = self._find_posted(ledger, [row], thread_ts=anchor["ts"], channel=anchor["channel"])
            if row.dedupe_key in found:
                return sent(found[row.dedupe_key])
        text, blks = blocks.update_reply(row.payload)
        return sent(self._post([row], text, blks, ledger=ledger, channel=anchor["channel"], thread_ts=anchor["ts"]))

    def _resolve(self, row: Claimed, ledger: Ledger) -> Result:
        anchor, waiting = ledger.anchor(row)
        if waiting:
            return defer("waiting for the episode's first message to be sent")
        if anchor is None:
            return skipped("nothing was posted for this episode, so there is nothing to resolve")
        if self.mode == "webhook":
            text, blks = blocks.single_message(row.payload)
            return sent(self._post([row], text, blks, ledger=ledger))
        if not anchor.get("joined"):  # a reply in an incident's thread has no message of its own to edit
            self._edit_resolved(row, anchor, ledger)
        if row.maybe_sent:
            found = self._find_posted(ledger, [row], thread_ts=anchor["ts"], channel=anchor["channel"])
            if row.dedupe_key in found:
                return sent(found[row.dedupe_key])
        text, blks = blocks.resolve_reply(row.payload)
        ref = self._post([row], text, blks, ledger=ledger, channel=anchor["channel"], thread_ts=anchor["ts"])
        ref["updated"] = anchor["ts"]
        return sent(ref)

    def _edit_resolved(self, row: Claimed, anchor: dict[str, Any], ledger: Ledger) -> None:
        """chat.update the episode's message so it shows the resolve (a grouped message: this item, or all)."""
        group = anchor.get("group") or [row.diagnosis_id]
        payloads = ledger.group_view(group, self.name, row.target) or [row.payload]
        mine = row.payload["diagnosis"]
        for p in payloads:
            if p["diagnosis"].get("id") == mine.get("id"):
                p["diagnosis"].update(state="resolved", resolved_step=mine.get("resolved_step"), resolved_at=mine.get("resolved_at"))
        text, blks = blocks.group_message(payloads)
        try:
            self.client.chat_update(channel=anchor["channel"], ts=anchor["ts"], text=text, blocks=blks)
        except SlackApiError as exc:
            code = _code(exc)
            if code not in _UNUSABLE_MESSAGE:
                raise
            # Someone deleted the message (or it is too old to edit): the thread reply still says it resolved.
            self._warn_once(f"edit:{code}", "could not mark the Slack message %s resolved (%s); replying only", anchor["ts"], code)

    def _digest(self, row: Claimed, ledger: Ledger) -> Result:
        if row.maybe_sent and self.mode == "token":
            found = self._find_posted(ledger, [row], thread_ts=None)
            if row.dedupe_key in found:
                return sent(found[row.dedupe_key])
        text, blks = blocks.digest_message(row.payload["digest"])
        return sent(self._post([row], text, blks, ledger=ledger))

    # -- Slack calls --------------------------------------------------------------------------------------------

    def _post(
        self, rows: list[Claimed], text: str, blks: list[dict], *, ledger: Ledger, channel: str | None = None,
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        metadata = {
            "event_type": METADATA_EVENT,
            "event_payload": {
                "dedupe_keys": ",".join(r.dedupe_key for r in rows),
                "diagnosis_ids": ",".join(str(r.diagnosis_id) for r in rows if r.diagnosis_id is not None),
            },
        }
        if self.mode == "webhook":
            resp = self.webhook.send(text=text, blocks=blks, unfurl_links=False, unfurl_media=False, metadata=metadata)
            if resp.status_code != 200:
                raise SlackDeliveryError(resp.status_code, (resp.body or "").strip()[:100], dict(resp.headers or {}))
            return {"webhook": True}
        kwargs: dict[str, Any] = {}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        for attempt in range(SDK_RETRIES + 1):
            if attempt:
                time.sleep(POST_BACKOFF_S * 2 ** (attempt - 1))
                found = self._find_posted(ledger, rows, thread_ts=thread_ts, channel=channel)
                if all(r.dedupe_key in found for r in rows):
                    return found[rows[0].dedupe_key]
            try:
                resp = self._poster.chat_postMessage(
                    channel=channel or rows[0].target, text=text, blocks=blks, unfurl_links=False,
                    unfurl_media=False, metadata=metadata, **kwargs,
                )
                break
            except Exception as exc:
                if attempt == SDK_RETRIES or not _may_have_posted(exc):
                    raise
        ref = {"channel": resp["channel"], "ts": resp["ts"]}
        if thread_ts:
            ref["thread_ts"] = thread_ts
        return ref

    def _find_posted(
        self, ledger: Ledger, rows: list[Claimed], *, thread_ts: str | None, channel: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Messages an earlier attempt posted for these rows: dedupe key -> message ref. Empty when unknowable."""
        if self.mode != "token":
            return {}
        target = rows[0].target
        channel = channel or self._channel_id(ledger, target)
        if channel is None:
            return {}
        oldest = min(as_utc(r.created) for r in rows) - timedelta(seconds=LOOKBACK_S)
        wanted = {r.dedupe_key for r in rows}
        found: dict[str, dict[str, Any]] = {}
        cursor = None
        try:
            for _ in range(LOOKUP_PAGES):
                args = {"channel": channel, "oldest": f"{oldest.timestamp():.6f}", "include_all_metadata": True, "limit": 200}
                if cursor:
                    args["cursor"] = cursor
                if thread_ts:
                    resp = self.client.conversations_replies(ts=thread_ts, **args)
                else:
                    resp = self.client.conversations_history(**args)
                for msg in resp.get("messages") or []:
                    meta = msg.get("metadata") or {}
                    if meta.get("event_type") != METADATA_EVENT:
                        continue
                    payload = meta.get("event_payload") or {}
                    keys = [k for k in str(payload.get("dedupe_keys", "")).split(",") if k]
                    for key in wanted.intersection(keys):
                        ref = {"channel": channel, "ts": msg["ts"]}
                        if thread_ts:
                            ref["thread_ts"] = thread_ts
                        else:
                            ids = [int(i) for i in str(payload.get("diagnosis_ids", "")).split(",") if i.isdigit()]
                            ref["group"] = ids
                        found[key] = ref
                cursor = (resp.get("response_metadata") or {}).get("next_cursor")
                if not cursor or wanted <= set(found):
                    break
        except SlackApiError as exc:
            self._lookup_refused(
                exc, "lookup",
                "cannot check Slack for a message an interrupted attempt may have posted (%s): add the "
                "channels:history scope (groups:history for private channels) to rule out duplicates; posting",
            )
            return {}
        return found

    def _channel_id(self, ledger: Ledger, target: str) -> str | None:
        """Slack's ID for ``target`` (lookups need IDs; routes may name channels as #name)."""
        if _CHANNEL_ID.match(target):
            return target
        if target in self._channel_ids:
            return self._channel_ids[target]
        known = ledger.known_channel_id(self.name, target)
        if known is None:
            known = self._list_channel(target.lstrip("#"))
        if known is not None:
            self._channel_ids[target] = known
        return known

    def _list_channel(self, name: str) -> str | None:
        cursor = None
        try:
            for _ in range(CHANNEL_LIST_PAGES):
                args: dict[str, Any] = {"types": "public_channel,private_channel", "exclude_archived": True, "limit": 1000}
                if cursor:
                    args["cursor"] = cursor
                resp = self.client.conversations_list(**args)
                for ch in resp.get("channels") or []:
                    if ch.get("name") == name:
                        return ch["id"]
                cursor = (resp.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    return None
        except SlackApiError as exc:
            self._lookup_refused(
                exc, "list",
                "cannot look up the ID of Slack channel #%s (%s): configure channel IDs (C0123...) or add the "
                "channels:read scope so txwatch can rule out duplicate posts after a timeout",
                name,
            )
        return None

    def _lookup_refused(self, exc: SlackApiError, kind: str, message: str, *args: Any) -> None:
        """Re-raise ``exc`` unless Slack refused a lookup for want of a scope; then warn once per kind and
        error code (``message`` takes ``args`` and then the code), and let the caller post without it."""
        code = _code(exc)
        if code not in _LOOKUP_REFUSED:
            raise exc
        self._warn_once(f"{kind}:{code}", message, *args, code)

    # -- errors -------------------------------------------------------------------------------------------------

    def classify(self, exc: BaseException, target: str) -> Result:
        """A delivery exception as a Result: retry for passing trouble, failed (never retried) for the rest."""
        if isinstance(exc, SlackApiError):
            status = getattr(exc.response, "status_code", 0) or 0
            code = _code(exc)
            headers = getattr(exc.response, "headers", {}) or {}
            return self._result(status, code, headers, target, _needed(exc))
        if isinstance(exc, SlackDeliveryError):
            return self._result(exc.status, exc.code, exc.headers, target, "")
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return retry(
                "timeout",
                f"no answer from Slack within {self.timeout_s:g}s (the message may have been posted; "
                "txwatch checks before posting again)",
            )
        if isinstance(exc, (URLError, ConnectionError, OSError)):
            return retry("connection_error", f"could not reach Slack: {SECRETS.text(exc)}")
        return retry("internal_error", f"{type(exc).__name__}: {SECRETS.text(exc)}")

    def _result(self, status: int, code: str | None, headers: Any, target: str, needed: str) -> Result:
        if status == 429 or code == "ratelimited":
            wait = retry_after_s(headers)
            return retry("ratelimited", f"Slack rate limit (HTTP 429); next attempt after {wait or 'a backoff'}s", wait)
        if status >= 500:
            return retry(f"http_{status}", f"Slack answered HTTP {status}; retrying with backoff")
        if code in PERMANENT:
            return failed(code, PERMANENT[code].format(code=code, target=target, needed=needed))
        if code in TRANSIENT:
            return retry(code, f"Slack answered {code}; retrying with backoff")
        reason = code or f"http_{status}"
        return failed(reason, f"Slack refused the request ({reason})")

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)


def _may_have_posted(exc: BaseException) -> bool:
    """A failure worth a quick retry that may nonetheless have posted: a dropped connection or a 500/503.
    (A timeout is not retried here: it already waited the whole timeout; the outbox tries again later.)"""
    if isinstance(exc, SlackApiError):
        return getattr(exc.response, "status_code", 0) in (500, 503)
    reason = exc.reason if isinstance(exc, URLError) else exc
    return isinstance(reason, ConnectionError)


def _code(exc: SlackApiError) -> str | None:
    data = getattr(exc.response, "data", None)
    return data.get("error") if isinstance(data, dict) else None


def _needed(exc: SlackApiError) -> str:
    data = getattr(exc.response, "data", None)
    needed = data.get("needed") if isinstance(data, dict) else None
    return f", needs {needed}" if needed else ""


def from_settings(settings: Settings, *, timeout_s: float) -> SlackSink:
    """The Slack sink (registered in ``txwatch.alerts.sinks``): with the bot token when one is set, else with the
    incoming webhook. Both set: the token wins, said once in the log."""
    token = settings.slack_token.get_secret_value() if settings.slack_token else None
    webhook_url = settings.slack_webhook_url.get_secret_value() if settings.slack_webhook_url else None
    if token and webhook_url:
        log.warning("both TXWATCH_SLACK_TOKEN and TXWATCH_SLACK_WEBHOOK_URL are set; using the token")
    return SlackSink(token=token, webhook_url=None if token else webhook_url, base_url=settings.slack_base_url,
                     timeout_s=timeout_s)
