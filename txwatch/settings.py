"""Collector settings: explicit argument, then TXWATCH_* environment variable, then config file, then default."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from txwatch.errors import ConfigError

DEFAULT_PORT = 8642
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # a 1k-layer model's sampled step is ~100 kB; 16 MiB leaves room


SEVERITIES = ("info", "warning", "critical")
_ROUTE_KEYS = ("channel", "severity", "project", "run", "rule", "labels", "mention", "continue")
_URL_SETTINGS = ("slack_webhook_url", "webhook_url", "alertmanager_url", "slack_base_url")


class SlackRoute(BaseModel):
    """One of ``slack_routes``, checked in order like Alertmanager's routes (docs/alerts.md, "Routing").

    Every condition given must match: ``severity``, ``project``, ``run``, ``rule`` (one value or a list;
    shell-style globs for the last three), ``labels`` (a subset of the diagnosis's labels). A match sends to
    ``channel`` and ends the search unless ``continue`` is true; ``mention`` replaces ``slack_mention_critical``.
    """

    model_config = ConfigDict(frozen=True)

    channel: str
    severity: tuple[str, ...] = ()
    project: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    rule: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    mention: str | None = None
    cont: bool = Field(default=False, alias="continue")

    @model_validator(mode="before")
    @classmethod
    def _a_mapping_with_a_channel(cls, data: Any) -> Any:
        if isinstance(data, SlackRoute):
            return data
        if not isinstance(data, dict):
            raise ValueError("expected a mapping like {severity: critical, channel: '#oncall'}")
        unknown = set(data) - set(_ROUTE_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_ROUTE_KEYS))}")
        channel = data.get("channel")
        if not isinstance(channel, str) or not channel.strip():
            raise ValueError("'channel' is required (a channel ID like C0123ABC or #name)")
        return {**data, "channel": channel.strip()}

    @field_validator("severity", "project", "run", "rule", mode="before")
    @classmethod
    def _names(cls, value: Any) -> tuple[str, ...]:
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"expected a name or a list of names, got {value!r}")
        return tuple(values)

    @field_validator("severity")
    @classmethod
    def _known_severities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in value if s not in SEVERITIES]
        if bad:
            raise ValueError(f"{bad[0]!r} is not one of {', '.join(SEVERITIES)}")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _label_pairs(cls, value: Any) -> Any:
        if value is None or isinstance(value, tuple):
            return value or ()
        if not isinstance(value, dict):
            raise ValueError("expected a mapping like {team: nlp}")
        return tuple(sorted((str(k), str(v)) for k, v in value.items()))

    @field_validator("cont", mode="before")
    @classmethod
    def _a_bool(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value


class Settings(BaseSettings):
    """Every collector setting. Field names map to TXWATCH_<NAME> environment variables."""

    # hide_input_in_errors: a bad webhook URL or token must not be echoed by a ValidationError
    model_config = SettingsConfigDict(env_prefix="TXWATCH_", extra="forbid", validate_default=True,
                                      hide_input_in_errors=True)

    # daemon
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    db_url: str | None = None  # default: SQLite in the user's data directory
    token: SecretStr | None = None  # bearer token for ingest and queries
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    public_url: str | None = None  # where people reach the web page; Slack messages link to it
    rules_dirs: list[Path] = Field(default_factory=list)  # user rule folders, on top of the built-in rules
    builtin_rules: bool = True
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    # A request waits this long on the database, then answers 503 with Retry-After (the hooks spool and retry).
    db_timeout_s: float = Field(default=10.0, gt=0)
    # Batches being stored at once, at most; more are answered 429 with Retry-After. Kept below the server's 40
    # worker threads, so pages, /readyz and /metrics still get one while ingest waits on a slow database.
    ingest_max_in_flight: int = Field(default=32, ge=1, le=1000)

    # background jobs
    stall_after_s: float = Field(default=300.0, gt=0)  # no heartbeat for this long -> run-stalled
    retention_days: float | None = None  # thin raw points older than this; None keeps everything
    finished_run_export_s: float = Field(default=600.0, ge=0)  # finished runs leave /metrics after this

    # alerts
    slack_token: SecretStr | None = None
    slack_channel: str | None = None
    slack_webhook_url: SecretStr | None = None
    slack_base_url: str | None = None
    slack_routes: list[SlackRoute] = Field(default_factory=list)  # JSON in TXWATCH_SLACK_ROUTES
    slack_mention_critical: str | None = None  # e.g. "@here"
    repeat_interval_s: float = Field(default=3600.0, ge=0)
    group_window_s: float = Field(default=10.0, ge=0)
    webhook_url: SecretStr | None = None
    alertmanager_url: str | None = None
    digest_cron: str | None = None  # e.g. "0 9 * * *"; off by default

    config_file: Path | None = Field(default=None, exclude=True)

    @field_validator("host")
    @classmethod
    def _host_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("host must not be empty (use 127.0.0.1 for this machine only)")
        return v

    @field_validator("token", "slack_token", "slack_webhook_url", "webhook_url", mode="before")
    @classmethod
    def _secret_not_empty(cls, v: Any, info: ValidationInfo) -> Any:
        # An empty secret is a mistake (an unset variable expanded to ""), never a choice: TXWATCH_TOKEN=""
        # would otherwise pass the "token required off loopback" check and accept "Bearer " with nothing after it.
        raw = v.get_secret_value() if isinstance(v, SecretStr) else v
        if isinstance(raw, str) and not raw.strip():
            raise ValueError(f"{info.field_name} is set but empty: give it a value, or unset it")
        return v

    @field_validator(*_URL_SETTINGS)
    @classmethod
    def _http_url(cls, v: Any, info: ValidationInfo) -> Any:
        raw = v.get_secret_value() if isinstance(v, SecretStr) else v
        if raw and not raw.lower().startswith(("http://", "https://")):
            # the value is not echoed: webhook URLs are secrets
            raise ValueError(f"TXWATCH_{str(info.field_name).upper()} must be an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _slack_can_post(self) -> Settings:
        if self.slack_token is not None and not self.slack_channel and not self.slack_routes:
            raise ValueError(
                "TXWATCH_SLACK_TOKEN is set but no channel: set TXWATCH_SLACK_CHANNEL (a channel ID like C0123ABC "
                "or #name) or slack_routes"
            )
        if self.slack_mode == "webhook" and self.slack_routes:
            raise ValueError(
                "slack_routes need a bot token (TXWATCH_SLACK_TOKEN): an incoming webhook posts to one fixed channel"
            )
        return self

    @property
    def slack_mode(self) -> Literal["token", "webhook"] | None:
        """How Slack is posted to: with the bot token when one is set, else the incoming webhook, else not."""
        if self.slack_token is not None:
            return "token"
        return "webhook" if self.slack_webhook_url is not None else None

    @model_validator(mode="after")
    def _token_off_loopback(self) -> Settings:
        if not self.is_loopback() and self.token is None:
            raise ValueError(
                f"refusing to listen on {self.host} without an ingest token: anyone who can reach it could "
                "write and read run data. Set TXWATCH_TOKEN (or --token), or bind to 127.0.0.1."
            )
        return self

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file_from(init_settings)
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def _config_file_from(init_settings: PydanticBaseSettingsSource) -> Path | None:
    import os

    data = init_settings()
    path = data.get("config_file") or os.environ.get("TXWATCH_CONFIG_FILE")
    return Path(path) if path else None


def load_settings(**overrides: Any) -> Settings:
    """Settings from ``overrides`` (None values ignored), the environment and an optional config file.

    Raises ``SettingsError`` with one line per bad setting, naming it.
    """
    from pydantic import ValidationError

    clean = {k: v for k, v in overrides.items() if v is not None}
    cfg = clean.get("config_file")
    if cfg is not None and not Path(cfg).is_file():
        raise SettingsError(f"config file {cfg} does not exist")
    try:
        return Settings(**clean)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = _where(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}" if where != "settings" else msg)
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


def _where(loc: tuple[int | str, ...]) -> str:
    """A setting's path as a user writes it: ``slack_routes[1].severity``; "settings" for the whole."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "settings"


class SettingsError(ConfigError):
    """Bad settings; the message names each bad one."""
