"""Errors raised at configuration time by the alerts package."""

from txwatch.errors import ConfigError



class AlertConfigError(ConfigError, ValueError):
    """Alert settings that cannot work (a route without a channel, a bad cron expression, ...).

    The message names the setting and says how to fix it.
    """
