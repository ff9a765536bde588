"""Orphaned spools are looked for while other processes create and remove spool folders: a folder that
vanishes while it is listed is skipped, not a traceback on the training's stderr (seen under the README
walkthrough: two demo runs, one releasing its spool while the other looked for orphans)."""

from __future__ import annotations

import contextlib
import os
import shutil

from txwatch_hooks import spool


def test_a_spool_folder_removed_while_orphans_are_listed_is_skipped(tmp_path, monkeypatch):
    root = tmp_path / "spool"
    gone, kept = root / "proj" / "gone" / "rank0", root / "proj" / "kept" / "rank0"
    gone.mkdir(parents=True)
    kept.mkdir(parents=True)
    real = os.scandir

    def racing_scandir(path="."):
        if not isinstance(path, int) and os.fspath(path) == os.fspath(root / "proj"):
            with real(path) as it:
                entries = list(it)
            shutil.rmtree(root / "proj" / "gone")  # another process released its spool meanwhile
            return contextlib.nullcontext(entries)
        return real(path)

    monkeypatch.setattr(spool.os, "scandir", racing_scandir)
    adopted, expired = spool.orphans(root, "http://127.0.0.1:9/", tmp_path / "mine" / "rank0")
    assert (adopted, expired) == ([], [])  # both empty: nothing to adopt, and no exception
    assert not gone.exists()
