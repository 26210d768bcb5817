"""Browser test of the liquidation-horizon control (SPEC-horizon.md §6, issue 11
item 4), in one page load of the dated reference book at 8,192 scenarios (the
book the server starts with; the scenarios menu is checked to set the count of
the book the page sends, with automatic recompute off so that no other count
compiles): to resolution the tiles show the v1 margin, "to resolution", and no
tau or marks columns; the "2 d" button re-margins the book through POST
/api/margin to kinetic_jax.portfolio_margin's 2-day figure, the margin tile
says "2-day horizon, as of 2026-06-01" and every row shows its tau ("resolved"
for the games resolving within two days) and its marks at the 1% / 99%
quantiles of its event's revealed latent; a date typed in one row's Resolves
cell moves its whole event (SOL-DEC to tomorrow: resolved, and the engine's
margin of that book); "Resolution" brings back the v1 margin and hides the
columns again. Same server, browser and skip rules as
test_dashboard_browser.py."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from test_dashboard_browser import (
    SCENARIOS,
    _money,
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

HORIZON = 2
LIVE = "BTC-100K-DEC"  # resolves 2026-12-31: tau = 2 / 213
SOL = ("SOL-200-DEC", "SOL-300-DEC")  # the event SOL-DEC, in no parlay
TOMORROW = "2026-06-02"


def _tiles(page) -> dict:
    return {"margin": _money(page.inner_text("#t-margin")),
            "horizon": page.inner_text("#t-horizon"),
            "pressed": page.get_attribute("#horizon [aria-pressed=true]", "data-horizon")}


def _row(page, contract: str):
    return page.locator(f'#positions tr[data-id="{contract}"]')


def test_horizon_control_remargins_and_shows_tau(server, tmp_path):  # noqa: F811
    _require_browser()  # skip early, before computing the expected figures
    url, _ = server
    book = reference_book()  # the server's book: the reference at 8,192 scenarios
    assert book.settings.scenarios == SCENARIOS
    v1 = kj.portfolio_margin(book)
    at_horizon = kj.portfolio_margin(book.with_settings(horizon_days=HORIZON))
    assert at_horizon.margin < v1.margin - 1000  # the horizon matters on this book
    figures = {c.id: c for c in at_horizon.contracts}
    as_of = datetime.date.fromisoformat(book.settings.as_of)
    resolved = [c.id for c in book.contracts if c.type != "parlay"
                and (datetime.date.fromisoformat(c.resolves) - as_of).days < HORIZON]
    assert resolved and all(figures[i].resolved_by_horizon for i in resolved)
    assert all(book.contracts[book.contract_ids.index(i)].resolves == TOMORROW
               for i in resolved)
    assert not any(figures[i].resolved_by_horizon for i in SOL)
    sol_resolved = kj.portfolio_margin(dataclasses.replace(book, contracts=tuple(
        dataclasses.replace(c, resolves=TOMORROW) if c.id in SOL else c
        for c in book.contracts)).with_settings(horizon_days=HORIZON))
    # The margin is the floor (Sports, Parlays) either way; the joint ES moves.
    assert sol_resolved.base != pytest.approx(at_horizon.base, rel=1e-3)

    with dashboard_page(url, tmp_path / "profile") as (page, errors):
        assert page.input_value("#scenarios") == str(SCENARIOS)
        assert page.evaluate("window.dashboard.state.result.report.scenarios") == SCENARIOS
        # The scenarios menu sets the count of the book sent (auto-recompute off:
        # nothing is computed at the other count), and back.
        page.uncheck("#auto")
        page.select_option("#scenarios", "1024")
        assert page.evaluate("window.dashboard.buildBook().book.model.scenarios") == 1024
        assert "press Re-run" in page.inner_text("#footer")
        page.select_option("#scenarios", str(SCENARIOS))
        page.check("#auto")  # recomputes the book on show
        _wait_idle(page, f"window.dashboard.state.result.report.scenarios === {SCENARIOS}"
                         " && window.dashboard.state.ui.auto === true")
        tiles = _tiles(page)
        assert abs(tiles["margin"] - v1.margin) <= 0.5 + 1e-6, tiles
        assert tiles["horizon"] == "to resolution" and tiles["pressed"] == "resolution"
        assert not page.locator("#positions th.hz").first.is_visible()
        assert not _row(page, LIVE).locator("td.tau").is_visible()

        # 2 days: the book is re-margined at the horizon.
        page.click(f'#horizon [data-horizon="{HORIZON}"]')
        _wait_idle(page, f"window.dashboard.state.result.report.horizon_days === {HORIZON}")
        report = page.evaluate("window.dashboard.state.result.report")
        assert report["margin"] == pytest.approx(at_horizon.margin, rel=1e-5)
        assert report["as_of"] == "2026-06-01"
        tiles = _tiles(page)
        assert abs(tiles["margin"] - at_horizon.margin) <= 0.5 + 1e-6, tiles
        assert tiles["horizon"] == "2-day horizon, as of 2026-06-01"
        assert tiles["pressed"] == str(HORIZON)
        assert page.locator("#positions th.hz").first.is_visible()
        # Each row's tau and stressed marks, from report.contracts.
        live = _row(page, LIVE)
        tau = live.locator("td.tau")
        assert tau.is_visible() and float(tau.get_attribute("data-tau")) == pytest.approx(
            2 / 213, rel=1e-12)
        assert tau.inner_text() == f"{2 / 213:.3g}"
        low, high = figures[LIVE].stressed_marks
        assert live.locator("td.marks").inner_text() == f"{low:.3f} / {high:.3f}"
        assert low < book.contracts[book.contract_ids.index(LIVE)].price < high
        for contract in resolved:
            assert _row(page, contract).locator("td.tau").inner_text() == "resolved", contract
        shown = page.eval_on_selector_all(
            "#positions td.tau", "tds => tds.filter(td => td.textContent !== '–').length")
        assert shown == len(book.contracts)  # every row, parlays included
        assert "τ and marks at the 2-day horizon" in page.inner_text("#pos-hint")

        # A date typed on one row is the date of its whole event (one date per
        # event): SOL-DEC moved to tomorrow resolves by the horizon.
        _row(page, SOL[0]).locator('input[data-key="resolves"]').fill(TOMORROW)
        assert _row(page, SOL[1]).locator('input[data-key="resolves"]').input_value() == TOMORROW
        _wait_idle(page, "window.dashboard.state.lastBook.contracts.filter(c => "
                         f"c.resolves === '{TOMORROW}').length === {len(SOL) + len(resolved)}")
        report = page.evaluate("window.dashboard.state.result.report")
        assert report["base"] == pytest.approx(sol_resolved.base, rel=1e-5)
        assert report["margin"] == pytest.approx(sol_resolved.margin, rel=1e-5)
        for contract in SOL:
            assert _row(page, contract).locator("td.tau").inner_text() == "resolved", contract
        page.screenshot(path=str(tmp_path / "horizon-2d.png"), full_page=True)

        # Back to resolution: the v1 margin, the columns hidden.
        page.click('#horizon [data-horizon="resolution"]')
        _wait_idle(page, "window.dashboard.state.result.report.horizon_days === null")
        assert page.evaluate("window.dashboard.state.result.report.margin") == pytest.approx(
            v1.margin, rel=1e-5)
        tiles = _tiles(page)
        assert abs(tiles["margin"] - v1.margin) <= 0.5 + 1e-6, tiles
        assert tiles["horizon"] == "to resolution" and tiles["pressed"] == "resolution"
        assert not page.locator("#positions th.hz").first.is_visible()
        assert "horizon_days" not in page.evaluate("window.dashboard.buildBook().book.model")
        page.screenshot(path=str(tmp_path / "horizon.png"), full_page=True)
        assert errors == []
