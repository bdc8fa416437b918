"""LICENSE and CITATION.cff say what pyproject.toml says: the same license, and the
citation the version that is installed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from fedpriv import __version__

ROOT = Path(__file__).parents[2]


def test_the_license_file_is_the_license_pyproject_declares():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_the_citation_names_this_version_and_license():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == __version__
    assert citation["license"] == "Apache-2.0"
    assert citation["title"] and citation["authors"] and citation["message"]
