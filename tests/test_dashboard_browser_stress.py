"""Browser test of the stress-scenario panel (static/js/stress.js), in one page
load: the reference book's scenarios are listed with their exact losses; a
scenario added in the page (name, a cluster factor, a resolution) is computed
by the server with the loss kinetic_jax.portfolio_margin gives, and is saved
with the book (the page used to drop `stress` when it saved an edited book); an
invalid factor value shows the server's field error at the scenario; the
stress add-on switch margins the worst scenario. Same server, browser and skip
rules as test_dashboard_browser.py."""

from __future__ import annotations

import dataclasses
import json
import time

import httpx
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

NAME, CLUSTER, VALUE, CONTRACT = "BTC slump, C wins", "BTC", -2.0, "PRES-2028-C"


def _losses(page) -> list[float]:
    return [float(x) for x in page.eval_on_selector_all(
        "#stress td.loss", "tds => tds.map(td => td.dataset.loss)")]


def test_stress_panel_add_edit_and_addon(server, tmp_path):  # noqa: F811
    _require_browser()  # skip early, before computing the expected figures
    url, state = server
    book = reference_book()  # the server's book: the reference at 8,192 scenarios
    extra = kj.Stress(NAME, ((CLUSTER, VALUE),), ((CONTRACT, "YES"),))
    added = kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                    (*book.stress, extra))
    expected = kj.portfolio_margin(added)

    with dashboard_page(url, tmp_path / "profile") as (page, errors):
        # The reference book's three scenarios, with their exact losses.
        names = page.eval_on_selector_all("#stress tr[data-stress]",
                                          "trs => trs.map(tr => tr.dataset.name)")
        assert names == [s.name for s in book.stress]
        assert _losses(page) == pytest.approx([s.loss for s in expected.stress[:3]],
                                              rel=1e-9, abs=1e-6)

        # Add one: a name, a cluster factor and a resolution.
        page.click("#add-stress")
        row = page.locator("#stress tr[data-stress]").last
        row.locator('input[data-key="name"]').fill(NAME)
        row.locator("select[title='+ factor']").select_option(CLUSTER)
        row = page.locator(f'#stress tr[data-name="{NAME}"]')
        row.locator(f'input[data-key="factors:{CLUSTER}"]').fill(str(VALUE))
        row.locator("select[title='+ resolve']").select_option(CONTRACT)
        _wait_idle(page, "window.dashboard.state.lastBook.stress.length === 4 && "
                         f"window.dashboard.state.lastBook.stress[3].resolve[{CONTRACT!r}]"
                         " === 'YES' && document.querySelectorAll('#stress td.loss')[3]"
                         ".dataset.loss !== undefined")
        assert page.evaluate("window.dashboard.state.lastBook.stress[3]") == {
            "name": NAME, "factors": {CLUSTER: VALUE}, "resolve": {CONTRACT: "YES"}}
        assert _losses(page) == pytest.approx([s.loss for s in expected.stress],
                                              rel=1e-9, abs=1e-6)
        top = page.locator(f'#stress tr[data-name="{NAME}"] td.w-top').inner_text()
        worst_cluster = max(expected.stress[3].clusters.items(), key=lambda kv: kv[1])[0]
        assert top.startswith(worst_cluster)

        # Saved with the book: the state file holds all four scenarios.
        deadline = time.monotonic() + 30
        while True:
            saved = httpx.get(url + "api/state", timeout=5).json()["book"].get("stress", [])
            if len(saved) == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert saved[3] == {"name": NAME, "factors": {CLUSTER: VALUE},
                            "resolve": {CONTRACT: "YES"}}
        assert [s["name"] for s in saved[:3]] == [s.name for s in book.stress]
        assert json.loads(state.read_text())["book"]["stress"] == saved

        # An invalid value: the server's field error, at the scenario's cell.
        cell = row.locator(f'input[data-key="factors:{CLUSTER}"]')
        cell.fill("abc")
        page.wait_for_function(
            "window.dashboard.idle() && window.dashboard.state.serverError && "
            "window.dashboard.state.serverError.path[0] === 'stress'",
            timeout=COMPUTE_S * 1000, polling=100)
        uid = row.get_attribute("data-stress")
        line = page.locator(f'#stress tr[data-err-for="{uid}"]')
        assert line.is_visible()
        assert f"stress[3] (name '{NAME}').factors.{CLUSTER}" in line.inner_text()
        assert "invalid" in cell.get_attribute("class")
        cell.fill(str(VALUE))
        _wait_idle(page, "!window.dashboard.state.serverError")
        assert not line.is_visible()

        # The stress add-on switch.
        page.check("#stress_addon")
        _wait_idle(page, "window.dashboard.state.lastBook.model.stress_addon === true")
        on = kj.portfolio_margin(dataclasses.replace(
            added, settings=dataclasses.replace(added.settings, stress_addon=True)))
        report = page.evaluate("window.dashboard.state.result.report")
        assert report["addons"]["stress"] == pytest.approx(on.addons["stress"], abs=0.05)
        assert report["margin"] == pytest.approx(on.margin, rel=1e-5)
        assert errors == []
