"""Property-based test of the live daemon against its own OpenAPI document (schemathesis).

Bounded (a few examples per operation) to stay fast on two cores; it still sends malformed and boundary
input to every route and checks: no 5xx, documented status codes and content types, responses matching
their schemas.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.live import start_live
from tests.collector.batches import batch, dumps, steps
from tests.conftest import _pg_base, create_pg_database, drop_pg_database

MAX_EXAMPLES = 8


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api_schema(request, tmp_path_factory):
    if request.param == "sqlite":
        url, cleanup = f"sqlite:///{tmp_path_factory.mktemp('st') / 'txwatch.db'}", None
    else:
        admin = request.getfixturevalue("pg_admin")
        name = create_pg_database(admin)
        url, cleanup = f"{_pg_base()}/{name}", lambda: drop_pg_database(admin, name)
    live = start_live(db_url=url)
    import httpx

    # one real run, so the run routes also answer 200 for project "p", run "r"
    httpx.post(live.url + "/api/v1/ingest", content=dumps(batch(series=steps("loss", 0, 50)
                                                                | steps("grad_norm/w", 0, 50))),
               headers={"content-type": "application/json"})
    yield schemathesis.openapi.from_url(live.url + "/openapi.json")
    live.stop()
    if cleanup:
        cleanup()


def test_api_conforms_to_its_openapi_document(api_schema):
    # the schemathesis pytest plugin's from_fixture does not work with this pytest; drive hypothesis directly
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # the silences routes (txwatch.alerts) validate combinations the schema cannot express (a silence
            # needs a run, a project or a rule), and a runs filter (where=) has a grammar no schema states:
            # every check but "schema-valid data is accepted" applies
            grammar = "silences" in case.path or "where" in (case.query or {})
            excluded = [positive_data_acceptance] if grammar else []
            case.call_and_validate(excluded_checks=excluded)

        check()
