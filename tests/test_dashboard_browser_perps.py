"""Browser test of the "Perps × binaries" view (SPEC-horizon.md §6.7, issue 12
item 5), in one page load: import examples/perps_and_strip.toml (at 8,192
scenarios) through the page's Import TOML; the view's tab appears; on BTC the
KPI tiles (spot, net delta, portfolio value, delta-hedge lots with the
unrounded figure in the tooltip, margin of the combined book) show the figures
POST /api/margin returns for the same book (and the margin is
kinetic_jax.portfolio_margin's); the positions split by leg, the PnL curve by
leg and the implied/model probability bars are the API's; the spot slider moves
the marker and the readout to the curve's value at that spot (interpolated
between its points); SPX switches every figure; the portfolio view's
worst-case tile says "no cap" (net short SPX). Same server, browser and skip
rules as test_dashboard_browser.py."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from test_dashboard_browser import (
    ROOT,
    _money,
    _require_browser,
    _wait_idle,
    dashboard_page,
    dashboard_server as dashboard_server,  # noqa: F401 - the fixture
    server as server,  # noqa: F401 - the fixture
)

import kinetic_jax as kj

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.xdist_group("dashboard-browser")]  # one server: see `dashboard_server`

EXAMPLE = ROOT / "examples" / "perps_and_strip.toml"
SCENARIOS = 8192
SPOT_BETWEEN = 101500  # halfway between two of BTC's curve points (step $1,000)


def _number(text: str) -> float:
    return float(text.split()[0].replace(",", "").replace("\u2212", "-").replace("+", ""))


def _tiles(page) -> dict:
    return {k: page.inner_text(f"#p-{k}") for k in ("spot", "delta", "value", "lots", "margin")}


def _readout(page) -> tuple[float, float, str]:
    out = page.locator("#perp-readout")
    return (float(out.get_attribute("data-spot")), float(out.get_attribute("data-pnl")),
            out.inner_text())


def _chart(page, div: str) -> list[dict]:
    return page.evaluate(f"document.getElementById('{div}').data.map("
                         "t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}))")


def _check_underlying(page, api: dict, uid: str):
    rep = next(u for u in api["report"]["underlyings"] if u["id"] == uid)
    view = next(u for u in api["underlyings"] if u["id"] == uid)
    page.select_option("#perp-asset", uid)
    page.wait_for_function(f"document.getElementById('p-spot').dataset.value === '{rep['spot']}'",
                           polling=100)
    tiles = _tiles(page)
    assert _money(tiles["spot"]) == rep["spot"]
    assert _number(tiles["delta"]) == pytest.approx(rep["net_delta"], abs=5e-5)
    assert tiles["delta"] == f"+{rep['net_delta']:.4f}"  # both examples are net long
    assert abs(_money(tiles["value"]) - view["portfolio_value"]) <= 0.5
    lots = rep["hedge_lots"]
    assert _number(tiles["lots"]) == lots["rounded"] and tiles["lots"].endswith(" lots")
    assert f"unrounded {lots['unrounded']} lots of {rep['lot_size']}" in page.get_attribute(
        "#p-lots", "title")
    assert abs(_money(tiles["margin"]) - api["report"]["margin"]) <= 0.5

    # Positions split by leg: its perps/futures, then each binary with its figures.
    figures = {c["id"]: c for c in api["report"]["contracts"]}
    legs = page.locator("#perp-legs")
    assert legs.locator("tr[data-leg=linear]").evaluate_all(
        "rows => rows.map(r => r.dataset.id)") == view["linear"]
    rows = legs.locator("tr[data-leg=binary]")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == view["binaries"]
    for i, cid in enumerate(view["binaries"]):
        cell = rows.nth(i).locator("td[data-model]")
        assert float(cell.get_attribute("data-model")) == figures[cid]["model_probability"]
        assert float(rows.nth(i).locator("td[data-effective]").get_attribute(
            "data-effective")) == figures[cid]["effective_strike"]

    # The PnL curve at the horizon: binaries, perp/future, total, and the marker.
    curve = rep["pnl_curve"]
    lines = _chart(page, "perp-pnl-chart")
    assert [t["name"] for t in lines[:3]] == ["Binaries", "Perp / future", "Total"]
    for trace, ys in zip(lines, (view["pnl_binaries"], view["pnl_linear"], curve["pnl"])):
        assert trace["x"] == curve["spot"] and trace["y"] == pytest.approx(ys, rel=1e-12)
    # Implied against model probability per strike.
    bars = _chart(page, "perp-prob-chart")
    assert len(bars) == 2 and len(bars[0]["y"]) == len(view["binaries"])
    assert sorted(bars[1]["y"]) == pytest.approx(
        sorted(figures[c]["model_probability"] for c in view["binaries"]), rel=1e-12)
    assert sorted(bars[0]["y"]) == pytest.approx(
        sorted(figures[c]["implied_probability"] for c in view["binaries"]), rel=1e-12)

    # The slider starts at the spot: the readout is the curve's value there.
    spot, pnl, text = _readout(page)
    mid = curve["spot"].index(rep["spot"])
    assert spot == rep["spot"] and pnl == pytest.approx(curve["pnl"][mid], rel=1e-12)
    return rep, view, text


def test_perps_view_tiles_slider_and_assets(server, tmp_path):  # noqa: F811
    _require_browser()  # skip early, before computing the expected figures
    url, _ = server
    text = EXAMPLE.read_text().replace("scenarios = 131072", f"scenarios = {SCENARIOS}")
    assert f"scenarios = {SCENARIOS}" in text
    path = tmp_path / "perps_and_strip.toml"
    path.write_text(text)
    book = kj.loads_book(text)
    expected = kj.portfolio_margin(book)
    assert not expected.capped and len(expected.underlyings) == 2

    with dashboard_page(url, tmp_path / "profile") as (page, errors):
        assert page.locator("#views").is_hidden()  # the reference book has no underlyings
        page.set_input_files("#import-file", str(path))
        _wait_idle(page, "window.dashboard.state.result.report.underlyings.length === 2")
        # The page's book is the file's; the API's figures for it are the engine's.
        sent = page.evaluate("window.dashboard.state.lastBook")
        assert kj.book_to_dict(kj.parse_book(sent)) == kj.book_to_dict(book)
        api = httpx.post(url + "api/margin?sensitivities=false&histogram=false", json=sent,
                         timeout=240).json()
        assert api["report"]["margin"] == pytest.approx(expected.margin, rel=1e-5)
        assert page.evaluate("window.dashboard.state.result.report.margin") == pytest.approx(
            api["report"]["margin"], rel=1e-6)
        assert page.inner_text("#t-worst") == "no cap"  # net short SPX: no cap

        page.click('#views [data-view="perps"]')
        assert page.locator("#perps").is_visible() and page.locator("#tiles").is_hidden()
        assert page.locator("#perp-asset option").evaluate_all(
            "o => o.map(x => x.value)") == ["BTC", "SPX"]
        rep, view, before = _check_underlying(page, api, "BTC")

        # Move the slider to its end (as a person would: the End key), then between
        # two of the curve's points: the readout and the marker follow.
        slider = page.locator("#perp-spot")
        slider.focus()
        page.keyboard.press("End")
        spot, pnl, after = _readout(page)
        curve = rep["pnl_curve"]
        assert spot == curve["spot"][-1] == 150000 and pnl == pytest.approx(curve["pnl"][-1])
        assert after != before and "150,000" in after
        marker = _chart(page, "perp-pnl-chart")[3]
        assert marker["x"] == [150000] and marker["y"] == pytest.approx([curve["pnl"][-1]])
        slider.evaluate(f"(e) => {{ e.value = {SPOT_BETWEEN}; "
                        "e.dispatchEvent(new Event('input', {bubbles: true})); }")
        spot, pnl, _ = _readout(page)
        j = curve["spot"].index(101000)
        assert spot == SPOT_BETWEEN
        assert pnl == pytest.approx((curve["pnl"][j] + curve["pnl"][j + 1]) / 2, rel=1e-9)
        assert pnl == pytest.approx(np.interp(SPOT_BETWEEN, curve["spot"], curve["pnl"]))
        page.screenshot(path=str(tmp_path / "perps-btc.png"), full_page=True)

        # SPX: every figure switches to the other underlying.
        spx, _, spx_text = _check_underlying(page, api, "SPX")
        assert spx["hedge_lots"]["rounded"] == -14 and "SPX at $6,000" in spx_text
        assert spx_text != after
        page.screenshot(path=str(tmp_path / "perps-spx.png"), full_page=True)

        # Back to the portfolio view: its tiles again.
        page.click('#views [data-view="portfolio"]')
        assert page.locator("#tiles").is_visible() and page.locator("#perps").is_hidden()
        assert errors == []
