"""Errors raised at configuration time by the alerts package."""


class AlertConfigError(ValueError):
    """Alert settings that cannot work (a route without a channel, a bad cron expression, ...).

    The message names the setting and says how to fix it.
    """
