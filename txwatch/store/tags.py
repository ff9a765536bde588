"""A run's tags: words to find it by (``txwatch tag``, ``POST /api/v1/runs/{project}/{run}/tags``).

They live in the run's info (``info["tags"]``, a sorted list), where ``watch(tags=[...])`` puts them too; the
collector adds a job's tags to those stored (``BatchWriter.run_changes``), so a tag added by hand stays.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from txwatch.wire.batch import MAX_TAGS, TAG_PATTERN
from txwatch.store.models import Run

_TAG = re.compile(TAG_PATTERN)


class BadTag(ValueError):
    """A tag that is not a word a filter can quote, or one too many; the message says which."""


def check(tags: Iterable[str]) -> list[str]:
    out = []
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.match(tag):
            raise BadTag(f"tag {tag!r} is not allowed: use 1 to 100 characters of letters, digits and ._:@+=/- "
                         "starting with a letter or digit")
        out.append(tag)
    return out


def change(session: Session, run_id: int, add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[str]:
    """Add and remove tags of run ``run_id`` (locked while it changes) and commit; returns its tags."""
    add, remove = check(add), check(remove)
    run = session.execute(select(Run).where(Run.id == run_id).with_for_update()).scalar_one()
    info = dict(run.info or {})
    tags = (set(info.get("tags") or []) | set(add)) - set(remove)
    if len(tags) > MAX_TAGS:
        raise BadTag(f"a run has at most {MAX_TAGS} tags; this would make {len(tags)}")
    info["tags"] = sorted(tags)
    run.info = info
    session.commit()
    return info["tags"]
