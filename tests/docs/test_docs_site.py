"""The documentation site works opened from disk, as the README says to open it.

A real browser (Debian's headless Chromium) opens build/site/index.html through
file://, follows every link of the navigation and checks that each shows its page,
not a folder listing (what directory URLs gave), that search finds a word with no
server behind it, and that nothing is asked of the network. The API reference is
checked to lead with what users call.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chromium_cdp import BrowserError, Page

import fedpriv

pytestmark = pytest.mark.processes

ROOT = Path(__file__).parents[2]
#: What a page fetched from disk may ask for: its own files and inline data.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
#: The primary navigation's page links, as a reader sees them (not the current
#: page's table of contents, which material nests inside it).
NAV_LINKS = """[...document.querySelectorAll('nav.md-nav--primary a.md-nav__link')]
  .filter(a => !a.closest('.md-nav--secondary'))
  .map(a => [a.innerText.trim(), a.href])"""
SHOWN = """({title: document.title,
  h1: document.querySelector('article h1')?.innerText ?? document.querySelector('h1')?.innerText,
  canonical: document.querySelector('link[rel=canonical]')?.href ?? null})"""


class _MkdocsLoader(yaml.SafeLoader):
    """mkdocs.yml as MkDocs reads it: ``!ENV [NAME, default]`` takes NAME's value if set."""


def _env(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return os.environ.get(loader.construct_scalar(node))
    *names, default = loader.construct_sequence(node)
    return next((os.environ[name] for name in names if name in os.environ), default)


_MkdocsLoader.add_constructor("!ENV", _env)


def mkdocs_config() -> dict[str, Any]:
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_MkdocsLoader)


def nav_pages(items: list[Any]) -> list[tuple[str, str]]:
    """(title, page path in the built site) of every page in mkdocs.yml's nav, in order."""
    pages = []
    for item in items:
        ((title, target),) = item.items()
        if isinstance(target, list):
            pages += nav_pages(target)
        else:
            pages.append((title, re.sub(r"\.md$", ".html", target)))
    return pages


def remote_requests(page: Page) -> list[str]:
    return [url for url in page.requested_urls() if not url.startswith(LOCAL_SCHEMES)]


def test_every_nav_link_opens_its_page_from_disk(site, browser):
    config = mkdocs_config()
    expected = nav_pages(config["nav"])
    assert len(expected) > 20  # the whole nav, not an empty one that passes vacuously
    browser.open((site / "index.html").as_uri())
    links = browser.evaluate(NAV_LINKS)

    problems = []
    for title, url in links:
        browser.open(url)
        shown = browser.evaluate(SHOWN)
        page_title = config["site_name"] if url.endswith("/index.html") else f"{title} - fedpriv"
        if shown["title"] != page_title or not shown["h1"] or shown["h1"].startswith("Index of"):
            problems.append(f"{title} ({url}) shows {shown['title']!r}, h1 {shown['h1']!r}")
        path = url.removeprefix(site.as_uri() + "/")
        if shown["canonical"] != config["site_url"] + path:
            problems.append(f"{title}: canonical {shown['canonical']!r}, not under site_url")
    assert not problems, "\n".join(problems)
    # Every page of mkdocs.yml's nav, linked by file (quickstart.html, not quickstart/).
    assert links == [[title, (site / path).as_uri()] for title, path in expected]
    assert not remote_requests(browser)


@pytest.mark.parametrize(
    ("word", "page"), [("load_config", "reference/api.html"), ("epsilon", "privacy.html")]
)
def test_search_finds_a_word_from_disk(site, browser, word, page):
    browser.open((site / "index.html").as_uri())
    browser.evaluate("document.querySelector('input.md-search__input').focus()")
    browser.type_text(word)
    # Material's search runs in a worker; from file:// only the offline plugin's index
    # script and the iframe-worker shim let it answer at all.
    meta_text = "document.querySelector('.md-search-result__meta').innerText"
    try:
        browser.wait_until("document.querySelectorAll('.md-search-result__item').length")
    except BrowserError as error:
        pytest.fail(
            f"search from disk found nothing for {word!r}: it says {browser.evaluate(meta_text)!r}"
            f"; asked off disk for {remote_requests(browser)} ({error})"
        )
    meta = browser.evaluate(meta_text)
    found = browser.evaluate(
        "[...document.querySelectorAll('.md-search-result__item a')].map(a => a.href)"
    )
    assert re.match(r"\d+ matching documents?", meta), meta
    assert any(url.startswith((site / page).as_uri()) for url in found), found
    assert not remote_requests(browser)


def test_the_api_reference_leads_with_what_users_call(site):
    html = (site / "reference" / "api.html").read_text()
    documented = re.findall(r'<h[2-4][^>]*\bid="(fedpriv\.[\w.]+)"', html)
    assert documented[:3] == ["fedpriv.run", "fedpriv.resume", "fedpriv.load_config"]
    # Every public name of the package, under the name users import it by.
    public = {f"fedpriv.{name}" for name in fedpriv.__all__ if name != "__version__"}
    assert {name for name in documented if name.count(".") == 1} == public
    assert {"fedpriv.ExperimentConfig.replace", "fedpriv.Result.to_dataframe"} <= set(documented)
    # Internals live on the extension points page.
    assert "RunContext" not in html
    extending = (site / "reference" / "extending.html").read_text()
    assert 'id="fedpriv.runtime.context.RunContext"' in extending
