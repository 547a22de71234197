"""The search page at ``/`` in a real browser: headless Chromium (Debian's) driven by Playwright,
against ``embedcluster run`` with an API key, two tables and the embedded store.

The page asks for the key, lists the tables and their payload fields, searches, filters by a
year range and by table, switches mode, and keeps a live line of the pipeline's state.  A
screenshot is saved as the test's artifact (``tests/artifacts/search_page.png``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import psycopg
import pytest

from tests.support.harness import REPO, free_port, start_run, wait_caught_up, write_config

pytestmark = pytest.mark.integration

API_KEY = "page-" + "0123456789abcdef" * 2
ARTIFACTS = REPO / "tests" / "artifacts"
TABLES = [
    {"name": "public.books", "text": "{description}", "payload": ["name", "description", "author", "year"],
     "filterable": ["year", "author"]},
    {"name": "public.films", "text": "{plot}", "payload": ["name", "year"], "filterable": ["year"]},
]
FILMS = [(1, "Alien", "The crew of a spaceship in deep space is hunted by a deadly creature.", 1979),
         (2, "Paddington", "A polite bear from Peru visits London and looks for a home.", 2014)]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian's chromium is needed for this test: apt-get install chromium (make install does)"
    return found


def _hits(page) -> list[dict[str, str]]:  # noqa: ANN001
    """The result list as the user reads it: title, table and the payload lines of each hit."""
    out = []
    for text in page.locator(".hit").all_inner_texts():
        lines = text.splitlines()
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        out.append({"title": re.sub(r"\s+-?\d+\.\d{3}\s+\S+$", "", lines[0]).strip(),
                    "table": lines[0].rsplit(" ", 1)[-1], **fields})
    return out


def test_the_search_page_in_headless_chromium(books: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    with psycopg.connect(books, autocommit=True) as conn:
        conn.execute("CREATE TABLE films (id int PRIMARY KEY, name text, plot text, year int)")
        conn.cursor().executemany("INSERT INTO films VALUES (%s, %s, %s, %s)", FILMS)
        years = dict(conn.execute("SELECT name, year FROM books").fetchall())
    monkeypatch.setenv("EMBEDCLUSTER_API_KEY", API_KEY)
    port = free_port()
    config = write_config(tmp_path / "ec.toml", books, port, {"kind": "qdrant", "collection": "page",
                                                              "path": str(tmp_path / "qdrant")}, tables=TABLES)
    app = start_run(config, port, tmp_path / "run.log")
    try:
        wait_caught_up(books, "embedcluster")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=_chromium(),
                                         args=["--no-sandbox", "--disable-background-networking"])
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 900})
                page.goto(app.base + "/")
                # the app wants its key: the page says so and asks for it, then lists the tables
                expect(page.locator("#keyform")).to_be_visible()
                expect(page.locator("#status")).to_contain_text("needs its API key")
                page.fill("#key", API_KEY)
                page.locator("#keyform button").click()
                expect(page.locator("#table option")).to_have_count(3)  # all tables, public.books, public.films
                expect(page.locator("#field")).to_have_value("year")
                # the live line: state, rows applied, lag
                expect(page.locator("#status")).to_contain_text("streaming")
                expect(page.locator("#status")).to_contain_text("rows applied")
                expect(page.locator("#status")).to_contain_text("lag 0 bytes", timeout=20_000)

                page.fill("#q", "battle in space")
                page.press("#q", "Enter")
                expect(page.locator("#summary")).to_contain_text("10 results (dense)")
                hits = _hits(page)
                # the two stories of fights with beings from space, from both tables, come first
                assert {(h["title"], h["table"]) for h in hits[:2]} == {
                    ("The War of the Worlds", "public.books"), ("Alien", "public.films")}, hits
                assert {h["title"] for h in hits} == set(years) | {f[1] for f in FILMS}

                # a year range (inside the store): every book and film up to 1900, and only those
                page.fill("#to", "1900")
                page.locator("#to").dispatch_event("change")
                expect(page.locator("#summary")).to_contain_text("2 results")
                assert sorted(h["title"] for h in _hits(page)) == sorted(n for n, y in years.items() if y <= 1900)
                assert all(int(h["year"]) <= 1900 for h in _hits(page))
                page.fill("#to", "")
                page.fill("#from", "1970")
                page.select_option("#table", "public.films")  # one table: its films since 1970
                expect(page.locator(".hit .title").filter(has_text="Alien")).to_have_count(1)
                expect(page.locator(".hit")).to_have_count(2)
                assert {h["table"] for h in _hits(page)} == {"public.films"}

                # keyword mode (BM25 alone) over every table: the words themselves
                page.fill("#from", "")
                page.select_option("#table", "")
                page.fill("#q", "Martian invasion")
                page.locator("#modes label", has_text="keyword").click()
                expect(page.locator("#summary")).to_contain_text("(keyword)")
                assert _hits(page)[0]["title"] == "The War of the Worlds"
                page.locator("#modes label", has_text="hybrid").click()
                expect(page.locator("#summary")).to_contain_text("(hybrid)")
                assert _hits(page)[0]["title"] == "The War of the Worlds"

                # a new row shows up in the live line (rows applied goes up) and in the results
                applied = int(re.search(r"([\d,]+) rows applied", page.inner_text("#status")).group(1).replace(",", ""))
                with psycopg.connect(books, autocommit=True) as conn:
                    conn.execute("INSERT INTO films VALUES (3, 'Mars Attacks!', 'Martians invade Earth and mock everyone.', 1996)")
                expect(page.locator("#status")).not_to_contain_text(f" {applied:,} rows applied", timeout=15_000)
                page.press("#q", "Enter")
                expect(page.locator(".hit .title").filter(has_text="Mars Attacks!")).to_have_count(1)

                page.locator("#modes label", has_text="dense").click()
                page.fill("#q", "battle in space")
                page.press("#q", "Enter")
                expect(page.locator("#summary")).to_contain_text("(dense)")
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shot = ARTIFACTS / "search_page.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
            finally:
                browser.close()
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
