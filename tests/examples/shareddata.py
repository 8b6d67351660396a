"""Where the public lead data lies (../shared/data, beside the checkout; worktrees sit one level
deeper). Without it the example tests skip on a developer's machine, but fail under CI
(LEADPULSE_REQUIRE_SHARED_DATA=1, set by .ci/run): a skipped integration test proves nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_file(repo_root: Path, name: str) -> Path:
    """The path of `name` under shared/data, for a test that needs it."""
    for base in (repo_root.parent, repo_root.parent.parent):
        path = base / "shared" / "data" / name
        if path.is_file():
            return path
    why = f"{name} is not beside the checkout (shared/data/{name})"
    if os.environ.get("LEADPULSE_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(why + "; CI requires it")
    pytest.skip(why)
