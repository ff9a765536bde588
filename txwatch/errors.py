"""The collector's one configuration-error type, under the settings layer so every layer can raise it.

A ``ConfigError`` is misuse at configuration time (a bad setting, rule file, alert route or database URL): it
is raised at once, its message names what is wrong, and the daemon does not start. ``SettingsError``,
``DatabaseError``, ``RuleError``, ``ConditionError`` and ``AlertConfigError`` are its kinds.
"""

from __future__ import annotations


class ConfigError(Exception):
    """Configuration that cannot work; the message names the setting, file or line and how to fix it."""
