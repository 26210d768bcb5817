"""Browser test of the what-if preview (static/js/whatif.js): with auto-recompute
off, editing a quantity shows the incremental margin of that edit (POST
/api/what-if on the last computed book) before it is applied, equal to
kinetic_jax.portfolio_margin of the edited book minus the book's margin; a
contract added as a new row is previewed too; re-running marks the preview
applied. Same server, browser and skip rules as test_dashboard_browser.py."""

from __future__ import annotations

import json

import pytest
from test_dashboard_browser import (
    COMPUTE_S,
    _require_browser,
    _wait_idle,
    dashboard_page,
    dashboard_server as dashboard_server,  # noqa: F401 - the fixture
    reference_book,
    server as server,  # noqa: F401 - the fixture
)

import kinetic_jax as kj

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.xdist_group("dashboard-browser")]  # one server: see `dashboard_server`

CONTRACT, QUANTITY = "BTC-100K-DEC", 25_000


def _wait_preview(page, text: str):
    page.wait_for_function(
        "(() => { const b = document.getElementById('whatif');"
        " return !b.hidden && b.dataset.incremental !== undefined"
        f" && b.textContent.includes({text!r}) && !b.textContent.includes('computing'); }})()",
        timeout=COMPUTE_S * 1000, polling=100)


def test_what_if_preview_before_apply(server, tmp_path):  # noqa: F811
    _require_browser()  # skip early, before computing the expected figures
    url, _ = server
    book = reference_book()  # the server's book: the reference at 8,192 scenarios
    before = kj.portfolio_margin(book)
    q = book.net_quantities()
    q[CONTRACT] = float(QUANTITY)
    after = kj.portfolio_margin(book.with_positions(q))

    with dashboard_page(url, tmp_path / "profile") as (page, errors):
        page.evaluate("window.dashboard.state.ui.auto = false")
        row = page.locator(f'#positions tr[data-id="{CONTRACT}"]')
        row.locator('input[data-key="quantity"]').fill(str(QUANTITY))
        _wait_preview(page, CONTRACT)
        box = page.locator("#whatif")
        shown = float(box.get_attribute("data-incremental"))
        # The default sampler (exact_block): the preview keeps the opening book's
        # proposal, the full call refits it, so they agree within standard errors
        # (exactly under the plain sampler: tests/test_dashboard_whatif.py).
        noise = 4 * (before.standard_error + after.standard_error)
        assert abs(shown - (after.margin - before.margin)) < noise
        assert "(applied)" not in box.inner_text()
        # Not applied yet: the tiles still show the book before the edit.
        assert page.evaluate("window.dashboard.state.result.report.margin") == pytest.approx(
            before.margin, rel=1e-6)
        # A price edit is not a trade: no preview.
        price = row.locator('input[data-key="price"]')
        price.fill("0.56")
        page.wait_for_function("document.getElementById('whatif').hidden")
        price.fill("0.55")
        _wait_preview(page, CONTRACT)
        # Applying it: the tiles move by the previewed amount, the preview says so.
        page.click("#rerun")
        _wait_idle(page, "window.dashboard.state.lastBook.positions.some(p => "
                         f"p.contract === '{CONTRACT}' && p.quantity === {QUANTITY})")
        assert page.evaluate("window.dashboard.state.result.report.margin") == pytest.approx(
            after.margin, rel=1e-5)
        assert box.inner_text().endswith("(applied)")
        # A new row: a contract new to the book, previewed on the traded book.
        page.click("#add-row")
        known = json.dumps(list(book.contract_ids))
        added = page.evaluate(
            f"window.dashboard.state.rows.filter(r => !{known}.includes(r.id))")
        assert len(added) == 1
        new = page.locator(f'#positions tr[data-id="{added[0]["id"]}"]')
        new.locator('input[data-key="quantity"]').fill("-4000")
        _wait_preview(page, added[0]["id"])
        assert "new contract" in box.inner_text()
        contract = kj.Contract(added[0]["id"], added[0]["cluster"], "binary", 0.5)
        traded = book.with_positions(q)
        grown = kj.Book(traded.contracts + (contract,), traded.positions
                        + (kj.Position(contract.id, -4000.0),), traded.hierarchy,
                        traded.settings, traded.stress)
        grown_report = kj.portfolio_margin(grown)
        expected = grown_report.margin - after.margin
        shown = float(box.get_attribute("data-incremental"))
        # Within standard errors under the default sampler (see above).
        noise = 4 * (after.standard_error + grown_report.standard_error)
        assert abs(shown - expected) < noise
        assert errors == []


def test_edits_that_are_not_one_trade_hide_the_preview(server, tmp_path):  # noqa: F811
    """Found by a probe: the preview is of one trade on the last computed book,
    so it is hidden when the table is anything else. A renamed contract was
    previewed as a new one (its position counted twice), the second of two edited
    rows was previewed alone, and re-running stamped "(applied)" on it though the
    tiles showed another figure."""
    _require_browser()
    url, _ = server
    with dashboard_page(url, tmp_path / "profile") as (page, errors):
        page.evaluate("window.dashboard.state.ui.auto = false")
        box = page.locator("#whatif")
        hidden = "document.getElementById('whatif').hidden"
        a, b = page.evaluate("window.dashboard.state.lastBook.positions.map(p => p.contract)")[:2]
        quantity_a = page.locator(f'#positions tr[data-id="{a}"] input[data-key="quantity"]')
        quantity_a.fill("12345")
        _wait_preview(page, a)
        # A second edited row: two trades, no preview (of either).
        page.locator(f'#positions tr[data-id="{b}"] input[data-key="quantity"]').fill("777")
        page.wait_for_function(hidden)
        quantity_a.fill("12346")
        page.wait_for_timeout(500)
        assert box.is_hidden()
        page.locator(f'#positions tr[data-id="{b}"] input[data-key="quantity"]').fill(
            str(page.evaluate(f"window.dashboard.state.lastBook.positions.find(p => "
                              f"p.contract === {a!r} ? false : p.contract === {b!r}).quantity")))
        quantity_a.fill("12347")  # b back as computed: a's edit is one trade again
        _wait_preview(page, a)
        # A renamed contract is not a new contract.
        rename = page.locator(f'#positions tr[data-id="{b}"] input[data-key="id"]')
        rename.fill(b + "-RENAMED")
        page.wait_for_function(hidden)
        rename.fill(b)
        quantity_a.fill("12346")
        _wait_preview(page, a)
        # A setting changed after the preview: re-running computes another book
        # than the previewed one, so the preview is hidden, not "(applied)".
        page.evaluate("window.dashboard.state.model.seed += 1")
        page.click("#rerun")
        _wait_idle(page, f"window.dashboard.state.lastBook.positions.some(p => "
                         f"p.contract === {a!r} && p.quantity === 12346)")
        page.wait_for_function(hidden)
        assert errors == []


def test_an_invalid_setting_is_named_and_stops_recomputing(server, tmp_path):  # noqa: F811
    """Found by a probe: a setting out of its range (liquidity threshold 5) was
    only outlined, and the book was recomputed and saved with the previous value
    while the field showed 5. Now the banner names it and nothing is computed
    until it is fixed."""
    _require_browser()
    url, _ = server
    with dashboard_page(url, tmp_path / "profile") as (page, errors):
        gen = page.evaluate("window.dashboard.state.gen")
        threshold = page.locator("#liquidity_threshold")
        valid = threshold.input_value()
        threshold.fill("5")
        page.wait_for_function("!document.getElementById('banner').hidden")
        banner = page.locator("#banner").inner_text()
        assert 'liquidity_threshold: "5" is not a number in' in banner, banner
        assert threshold.get_attribute("title").startswith("liquidity_threshold: ")
        page.click("#rerun")
        page.wait_for_timeout(300)
        assert page.evaluate("window.dashboard.state.gen") == gen  # nothing computed
        threshold.fill(valid)
        _wait_idle(page, f"window.dashboard.state.gen > {gen}")
        assert page.locator("#banner").is_hidden()
        assert errors == []
