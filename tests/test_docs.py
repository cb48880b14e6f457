"""The documentation site, built from the checkout and read in a real (headless) Chromium."""
import functools
import http.server
import os
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from derma_jepa.docs import build_docs, reading_order

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
IMAGE_PAGES = ["nbs/04_nuisance.html", "nbs/05_pairs.html", "nbs/run.html", "nbs/paper.html", "paper/index.html"]


def _browser_or_skip():
    "Debian's chromium and chromium-driver, installed here when they are missing and apt-get can; else a skip."
    if Path(CHROMIUM).exists() and Path(DRIVER).exists(): return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"], capture_output=True, timeout=900)
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("chromium and chromium-driver are not installed and cannot be installed here (apt-get as root)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "docs"
    r = build_docs(dest=out)
    return r


@pytest.fixture(scope="module")
def served(site):
    "The site over HTTP on 127.0.0.1 (a free port), as a reader's browser would load it."
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site["dest"]))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True); t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown(); httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600", "--disable-gpu"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    yield d
    d.quit()


def test_site_builds_without_warnings(site):
    assert site["warnings"] == []
    for p in reading_order(ROOT / "nbs"):
        assert f"nbs/{p.stem}.html" in site["pages"], p


class _Links(HTMLParser):
    def __init__(self):
        super().__init__(); self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"): self.ids.add(a["id"])
        if tag == "a" and a.get("href"): self.hrefs.append(a["href"])
        if tag in ("img", "script") and a.get("src"): self.hrefs.append(a["src"])
        if tag == "link" and a.get("href"): self.hrefs.append(a["href"])


def test_no_internal_link_is_broken(site):
    root = Path(site["dest"])
    parsed = {}
    for f in root.rglob("*.html"):
        if f.relative_to(root).parts[0] == "_static": continue           # the theme's Jinja templates, not pages
        p = _Links(); p.feed(f.read_text(errors="replace")); parsed[f] = p
    broken = []
    for f, p in parsed.items():
        for href in p.hrefs:
            if urlparse(href).scheme or href.startswith(("mailto:", "//", "javascript:")): continue
            u = urlparse(href); path, frag = u.path, u.fragment
            target = (f.parent / unquote(path)).resolve() if path else f
            if target.is_dir(): target = target / "index.html"
            if not target.exists(): broken.append(f"{f.relative_to(root)} -> {href}")
            elif frag and target.suffix == ".html" and target in parsed and frag not in parsed[target].ids:
                broken.append(f"{f.relative_to(root)} -> {href} (no such anchor)")
    assert not broken, "\n".join(broken[:30])


def test_pages_in_chromium(site, served, browser, tmp_path_factory):
    shots = tmp_path_factory.mktemp("screenshots")
    browser.get(served + "index.html")
    linked = {urlparse(a.get_attribute("href")).path.lstrip("/") for a in browser.find_elements("css selector", "a[href]")}
    for p in reading_order(ROOT / "nbs"):
        assert f"nbs/{p.stem}.html" in linked, f"the index does not link {p.name}"
    browser.get_log("browser")                                          # start each page's log afresh
    nb_pages = [f"nbs/{p.stem}.html" for p in reading_order(ROOT / "nbs")]
    pages = nb_pages + [p for p in site["pages"] if p not in nb_pages]          # every page of the site, notebooks first
    for page in pages:
        browser.get(served + page)
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all(Array.from(document.images).map(i => i.complete ? 1 : new Promise(r => { i.onload = i.onerror = r; })))"
            ".then(() => done(1));")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"{page}: console errors: {errors}"
        assert browser.find_elements("css selector", "h1"), f"{page}: no heading"
        width, window = browser.execute_script("return [document.querySelector('.bd-article-container').getBoundingClientRect().width,"
                                               " window.innerWidth]")
        assert width >= 0.7 * window, f"{page}: the article is {width:.0f} px of a {window} px window"
        search = browser.execute_script("return Array.from(document.querySelectorAll('.search-button-field, .search-button, "
                                        "form.bd-search, input[type=search]')).filter(e => e.offsetParent !== null).length")
        assert search == 1 or page == "search.html", f"{page}: {search} search boxes"   # the results page has its own form
        if page in nb_pages:                                           # nbdev's directives are build instructions, not content
            code = browser.execute_script("return Array.from(document.querySelectorAll('.cell_input')).map(e => e.innerText)")
            assert code and not any(l.lstrip().startswith("#|") for c in code for l in c.splitlines()), f"{page}: an nbdev directive is shown"
        if page in IMAGE_PAGES:
            widths = browser.execute_script("return Array.from(document.images).map(i => [i.src, i.naturalWidth]);")
            assert widths, f"{page}: no images"
            bad = [s for s, w in widths if not w]
            assert not bad, f"{page}: images that did not load: {bad}"
            browser.save_screenshot(str(shots / (page.replace("/", "_").replace(".html", ".png"))))
    assert len(list(shots.glob("*.png"))) == len(IMAGE_PAGES)
    print(f"screenshots: {shots}")
