"""Framework integrations of the training-side hooks (re-exported from ``txwatch_hooks.integrations``)."""
