"""Fixtures for the documentation site: the site built as `make docs` builds it, and
a headless Chromium (Debian's) with a fresh profile to open it from disk."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium_cdp import CHROMIUM, Page, chromium

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """`mkdocs build --strict` of this checkout into a temporary folder (tens of seconds)."""
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONWARNINGS": "ignore"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)]
    done = subprocess.run(build, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture
def browser(tmp_path) -> Iterator[Page]:
    """One tab of a headless Chromium started for this test, stopped after it."""
    if not CHROMIUM.is_file():
        pytest.skip(
            f"Debian's Chromium is not installed ({CHROMIUM} is missing): "
            "apt-get install chromium; `make test` installs it where apt-get is available"
        )
    with chromium(tmp_path / "chromium-profile") as page:
        yield page
