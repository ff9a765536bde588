"""Collector settings: explicit argument, then TXWATCH_* environment variable, then config file, then default."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from txwatch.errors import ConfigError

DEFAULT_PORT = 8642
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # a 1k-layer model's sampled step is ~100 kB; 16 MiB leaves room


class Settings(BaseSettings):
    """Every collector setting. Field names map to TXWATCH_<NAME> environment variables."""

    model_config = SettingsConfigDict(env_prefix="TXWATCH_", extra="forbid", validate_default=True)

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
    slack_routes: list[dict[str, Any]] = Field(default_factory=list)  # [{severity|project|label..., channel}]
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
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}" if where != "settings" else msg)
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


class SettingsError(ConfigError):
    """Bad settings; the message names each bad one."""
