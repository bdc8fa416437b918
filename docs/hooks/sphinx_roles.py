"""MkDocs hook: show the code's Sphinx cross-reference roles as plain code in the API pages.

fedpriv's docstrings use Sphinx roles (:class:`~fedpriv.results.Result`), which
mkdocstrings renders literally as ``:class:<code>~fedpriv.results.Result</code>``. This
keeps the code span and drops the role (and, for ``~``, the module path), as Sphinx would.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([^<]+)</code>")


def _plain(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Rewrite the roles in every page's HTML (only API pages have any)."""
    return _ROLE.sub(_plain, html)
