"""Migrations upgrade an empty database and a database at every earlier revision, on SQLite and PostgreSQL."""

from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from txwatch.store.db import MIGRATIONS_DIR, current_revision, head_revision, is_current, make_engine, upgrade
from txwatch.store.models import Base


def _revisions() -> list[str]:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_empty_database_upgrades_to_head_with_every_table(db_url):
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert is_current(engine)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    engine.dispose()


def test_every_earlier_revision_upgrades_to_head(db_url):
    revisions = _revisions()
    assert revisions[-1] == head_revision()
    engine = make_engine(db_url)
    for rev in revisions:
        upgrade(engine, rev)
        assert current_revision(engine) == rev
        upgrade(engine)  # from this revision straight to head
        assert is_current(engine)
        # back down to an empty schema for the next starting point
        from alembic import command

        from txwatch.store.db import alembic_config

        command.downgrade(alembic_config(engine), "base")
    engine.dispose()


def test_upgrade_is_idempotent(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    upgrade(engine)
    assert is_current(engine)
    engine.dispose()
