"""Framework integrations of the training-side hooks (re-exported from ``txwatch_hooks.integrations``)."""

from txwatch import _hooks

_hooks()  # without the hooks extra, an error that names it rather than "No module named 'txwatch_hooks'"
