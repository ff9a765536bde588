"""txwatch's training-side hooks: ``watch(model, optimizer)`` streams a PyTorch job's health to txwatch.

    import txwatch_hooks
    with txwatch_hooks.watch(model, optimizer, run="bert-ft-42") as monitor:
        ...
        monitor.log(loss=loss)

Installs and imports with torch and the standard library (plus psutil and nvidia-ml-py), nothing of the
collector's.
"""

from txwatch_hooks.monitor import Monitor, watch
from txwatch_hooks.sanity import preflight
from txwatch_hooks.wire import HOOKS_VERSION as __version__

__all__ = ["Monitor", "__version__", "preflight", "watch"]
