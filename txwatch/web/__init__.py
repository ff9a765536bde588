"""The web page: runs, one run's curves and layers, and the diagnoses, served by the daemon itself.

``router`` is a FastAPI ``APIRouter`` that ``txwatch.collector.app.create_app`` includes. It serves the HTML shells
(``/``, ``/runs/{project}/{run}``, ``/runs/{run}``, ``/diagnoses``) and the page's scripts and style sheets under
``/static/``. The shells carry no run data, so they are served without the bearer token; the scripts read the
same ``/api/v1`` JSON API as the CLI, sending the token the user typed in once (kept in the browser's
localStorage).
"""

from txwatch.web.routes import router

__all__ = ["router"]
