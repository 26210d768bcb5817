"""End-to-end test of the dashboard in headless Debian Chromium (Playwright's
sync API): start the real server (`kinetic-jax dashboard` in a subprocess, on a
free loopback port, with a temporary state file), load the page, move the
rho_within slider, edit a position, re-run, and check the margin and binding
tiles against kinetic_jax.portfolio_margin on the same edited book; then that
ids are shown as text in the charts and that an unreachable server is
reported as such.

The server starts from a saved state (the file a user's earlier session left):
the reference book at 8,192 scenarios (`SCENARIOS`), so that the warm-up and
every recompute run the programs the other dashboard tests compile at that
count, instead of the reference's 131,072 (whose warm-up alone compiled and ran
the sensitivities for tens of seconds). The tests check the page against the
engine on the same book, so the figures are exact at any count.

Skipped only when /usr/bin/chromium (or the playwright package) is missing and
KINETIC_JAX_REQUIRE_BROWSER is unset; CI sets it, and then a missing browser
fails. Saves a screenshot to tmp_path and to $KINETIC_JAX_SCREENSHOT if set.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import kinetic_jax as kj

# The browser modules ask `--dist loadgroup` to run them on one xdist worker, so that
# they share one server (`dashboard_server`). pytest-xdist 3.8 under pytest 9.2 ignores
# the group (pytest-dev/pytest-xdist#1386): each worker then starts its own server.
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.xdist_group("dashboard-browser")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "examples" / "reference_book.toml"
SERVER_START_S = 120
COMPUTE_S = 240  # first computations compile (margin, loss distribution, sensitivities)
EDIT_CONTRACT, EDIT_QUANTITY = "NFL-KC", -100000
SLIDER_STEPS = 10  # ArrowRight presses on rho_within (step 0.01)
SCENARIOS = 8192  # the book the server starts with (see the module doc)


def reference_book() -> kj.Book:
    """The reference book at `SCENARIOS` scenarios: what the page shows first."""
    return kj.load_book(REFERENCE).with_settings(scenarios=SCENARIOS)


def _seed_state(path: Path) -> None:
    """Writes a saved dashboard state holding `reference_book()`, sourced from
    the reference book (so the server, started without a book, resumes it)."""
    from kinetic_jax.dashboard import _service as service
    from kinetic_jax.dashboard._state import REFERENCE as SOURCE, Source, State, StateStore, sha256

    source = Source(SOURCE, sha256(service.reference_book_text()))
    StateStore(path).save(State(book=reference_book(), ui={}, source=source))


def _require_browser():
    required = bool(os.environ.get("KINETIC_JAX_REQUIRE_BROWSER"))
    if not os.path.exists(CHROMIUM):
        if required:
            pytest.fail(f"{CHROMIUM} is missing and KINETIC_JAX_REQUIRE_BROWSER is set")
        pytest.skip(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        if required:
            pytest.fail(f"playwright is not installed: {e}")
        pytest.skip("playwright is not installed")
    return sync_playwright


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """One `kinetic-jax dashboard` subprocess (see `dashboard_server`)."""

    def __init__(self, directory: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.state = directory / "state.json"
        self.log_path = directory / "server.log"
        _seed_state(self.state)
        self.log = open(self.log_path, "wb")
        env = {**os.environ, "HOME": str(directory)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kinetic_jax._cli", "dashboard", "--host", "127.0.0.1",
             "--port", str(self.port), "--state", str(self.state)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=directory,
        )

    def wait_started(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited: {self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not start in time")
            time.sleep(0.1)
        printed = self.log_path.read_text()
        assert self.url in printed, printed  # the command prints its URL

    def reset(self) -> None:
        """Saves `reference_book()` with no page settings, as the seeded state
        was: a page opened now starts from it. Repeated until read back, in
        case a save sent by the previous test's page lands after it."""
        wanted = kj.book_to_dict(reference_book())
        for _ in range(20):
            r = httpx.put(self.url + "api/state", json={"book": wanted, "ui": {}}, timeout=30)
            assert r.status_code == 200, r.text
            time.sleep(0.05)
            saved = httpx.get(self.url + "api/state", timeout=30).json()
            if saved["book"] == wanted and saved["ui"] == {}:
                return
        pytest.fail(f"the server's state did not reset: {saved}")

    def stop(self) -> None:
        self.proc.terminate()
        try:  # it exits when no engine call is in flight; the last page's follow-up
            # (its sensitivities, compiling for a new book) is not worth waiting for
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.log.close()


_SHARED: dict[str, _Server] = {}


@pytest.fixture(scope="session")
def dashboard_server(tmp_path_factory):
    """The one server every browser test of the session (of the xdist worker)
    talks to, so that its start (importing JAX) and warm-up are paid once;
    stopped when the session ends. A module using `server` imports this
    fixture too."""
    _require_browser()  # skip before starting anything
    shared = _SHARED.get("server")
    if shared is None:
        shared = _SHARED["server"] = _Server(tmp_path_factory.mktemp("dashboard-server"))
        try:
            shared.wait_started()
        except BaseException:
            del _SHARED["server"]
            shared.stop()
            raise
    yield shared
    if _SHARED.pop("server", None) is not None:  # each importing module has a copy
        shared.stop()


@pytest.fixture
def server(dashboard_server):
    """The real server, as a user starts it, on a free loopback port, resuming
    a saved state that holds `reference_book()`; yields ``(url, state file)``.
    Shared by the tests (`dashboard_server`): its saved state is reset to
    `reference_book()` first, so each test's page opens on that book."""
    if dashboard_server.proc.poll() is not None:
        pytest.fail(f"the server exited: {dashboard_server.log_path.read_text()}")
    dashboard_server.reset()
    yield dashboard_server.url, dashboard_server.state


def _money(text: str) -> float:
    t = text.replace("$", "").replace(",", "").replace("\u2212", "-")
    return float(t)


@contextlib.contextmanager
def dashboard_page(url: str, profile):
    """Opens the dashboard in headless Chromium (a fresh profile) and waits until
    the page is ready and idle; yields ``(page, errors)`` with the page's
    JavaScript errors collected, and closes the browser afterwards."""
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1600, "height": 1000})
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(COMPUTE_S * 1000)
            page.goto(url)
            page.wait_for_function("window.__dashboardReady === true", timeout=COMPUTE_S * 1000)
            _wait_idle(page)
            yield page, errors
        finally:
            context.close()


# What the page was doing, for a wait that timed out: its request flags, the
# banner and footer, and the server's engine queue (5 s at most to ask).
_SNAPSHOT = """async () => {
  const S = window.dashboard ? window.dashboard.state : {};
  const text = (id) => { const e = document.getElementById(id); return e ? e.innerText : null; };
  let health;
  try {
    const r = await fetch("/api/health", {signal: AbortSignal.timeout(5000)});
    health = (await r.json()).engine;
  } catch (e) { health = String(e); }
  return {running: S.running, pending: S.pending, scheduled: S.scheduled, gen: S.gen,
          resultGen: S.resultGen, serverError: S.serverError, unreachable: S.unreachable,
          banner: text("banner"), footer: text("footer"), engine: health};
}"""


def _wait_idle(page, condition: str = "true", timeout_s: float = COMPUTE_S):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "window.dashboard && window.dashboard.idle() && window.dashboard.state.result"
            f" && ({condition})",
            timeout=timeout_s * 1000, polling=100)
    except PlaywrightTimeout:
        pytest.fail(f"the page was not idle with {condition} after {timeout_s} s; "
                    f"its state: {json.dumps(page.evaluate(_SNAPSHOT), default=str)}")


def _wait_follow_ups(page):
    """Until the loss histogram and the sensitivities of the book on show have
    arrived (the page asks for them after the margin)."""
    page.wait_for_function(
        "window.dashboard.state.histGen === window.dashboard.state.resultGen && "
        "window.dashboard.state.sensGen === window.dashboard.state.resultGen",
        timeout=COMPUTE_S * 1000, polling=100)


def _tiles(page) -> dict:
    return {
        "margin": page.inner_text("#t-margin"),
        "binding": page.inner_text("#t-binding"),
        "full": page.inner_text("#t-full"),
        "worst": page.inner_text("#t-worst"),
    }


def _check_tiles(page, expected: kj.MarginReport):
    tiles = _tiles(page)
    assert abs(_money(tiles["margin"]) - expected.margin) <= 0.5 + 1e-6, (tiles, expected.margin)
    assert tiles["binding"] == expected.binding
    assert abs(_money(tiles["full"]) - expected.full_collateral) <= 0.5 + 1e-6
    assert abs(_money(tiles["worst"]) - expected.worst_case_loss) <= 0.5 + 1e-6
    shown = page.evaluate("window.dashboard.state.result.report")
    assert shown["margin"] == pytest.approx(expected.margin, rel=1e-6)
    assert shown["binding"] == expected.binding


def test_dashboard_end_to_end(server, tmp_path):
    _require_browser()  # skip early, before computing the expected figures
    url, state_file = server

    reference = reference_book()
    rho = round(reference.hierarchy.rho[reference.hierarchy.node_names.index("crypto")]
                + SLIDER_STEPS * 0.01, 2)
    slid = reference.with_hierarchy(reference.hierarchy.replace(rho={"crypto": rho}))
    quantities = slid.net_quantities()
    quantities[EDIT_CONTRACT] = float(EDIT_QUANTITY)
    edited = slid.with_positions(quantities)
    before, after_slider, after_edit = (kj.portfolio_margin(b) for b in (reference, slid, edited))
    assert after_slider.margin != before.margin
    assert after_edit.binding != after_slider.binding  # the edit moves the binding component

    profile = tmp_path / "chromium-profile"
    with dashboard_page(url, profile) as (page, errors):
        _check_tiles(page, before)
        _wait_follow_ups(page)
        # Every panel rendered.
        charts = ["waterfall", "histogram", "heatmap"]
        charts += ["sensitivities"] if hasattr(kj, "sensitivities") else []
        for chart in charts:
            assert page.locator(f"#{chart} .main-svg").count() > 0, chart
        assert page.locator("#clusters tbody tr").count() == 8
        assert page.locator("#tree [data-cluster]").count() == 8
        assert page.locator("#positions tbody tr[data-uid]").count() == len(reference.contracts)
        if hasattr(kj, "sensitivities"):
            # The slope for a purchase, per position, as the report gives it (it
            # differs from the mean slope where scenarios tie at a VaR).
            page.select_option("#sens-metric", "d_quantity_buy")
            bars = """() => { const d = document.getElementById('sensitivities').data[0];
                const p = window.dashboard.state.sens.positions;
                return d.y.map((id, i) => [d.x[i], p[id].d_quantity_buy, p[id].d_quantity]); }"""
            page.wait_for_function(f"({bars})().every(([x, buy]) => x === buy)",
                                   timeout=COMPUTE_S * 1000)
            shown = page.evaluate(bars)
            assert len(shown) == 24
            assert any(abs(x - mean) > 1e-4 for x, _, mean in shown), shown
            page.select_option("#sens-metric", "euler")
        compiles = httpx.get(url + "api/health", timeout=10).json()["jax"]["compiles"]

        # Move the rho_within slider with the keyboard (as a person would).
        slider = page.locator("#rho-within")
        slider.focus()
        for _ in range(SLIDER_STEPS):
            slider.press("ArrowRight")
        _wait_idle(page, "window.dashboard.state.lastBook.hierarchy"
                         f".find(n => n.node === 'crypto').rho === {rho}")
        _check_tiles(page, after_slider)
        _wait_follow_ups(page)
        health = httpx.get(url + "api/health", timeout=10).json()
        assert health["jax"]["compiles"] == compiles, "moving a slider recompiled"

        # A bad value gets an inline error and is not sent.
        row = page.locator(f'#positions tr[data-id="{EDIT_CONTRACT}"]')
        qty = row.locator('input[data-key="quantity"]')
        qty.fill("12abc")
        err = page.locator(f'#positions tr[data-err-for="{row.get_attribute("data-uid")}"]')
        assert "quantity must be a finite number" in err.inner_text()
        assert "invalid" in (qty.get_attribute("class") or "")

        # A value only the server can reject: its field error shows at the row.
        ladder = page.locator('#positions tr[data-id="BTC-100K-DEC"]')
        price = ladder.locator('input[data-key="price"]')
        qty.fill(str(EDIT_QUANTITY))
        price.fill("0.95")
        page.click("#rerun")
        _wait_idle(page, "window.dashboard.state.serverError !== null")
        line = page.locator(f'#positions tr[data-err-for="{ladder.get_attribute("data-uid")}"]')
        assert "inconsistent ladder" in line.inner_text()
        assert "BTC-DEC" in page.inner_text("#banner")
        price.fill("0.55")

        # The edit, then an explicit re-run.
        page.click("#rerun")
        _wait_idle(page, "window.dashboard.state.serverError === null && "
                         "window.dashboard.state.lastBook.positions.some(p => "
                         f"p.contract === '{EDIT_CONTRACT}' && p.quantity === {EDIT_QUANTITY})")
        _check_tiles(page, after_edit)
        assert page.locator("#banner").is_hidden()
        _wait_follow_ups(page)
        page.wait_for_timeout(300)
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 50_000
        if os.environ.get("KINETIC_JAX_SCREENSHOT"):
            target = Path(os.environ["KINETIC_JAX_SCREENSHOT"])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)

        # The edited book was saved (the page saves it 150 ms after a result),
        # to the state file: a reload (new session) brings it back.
        deadline = time.monotonic() + 30
        while True:
            saved = kj.parse_book(httpx.get(url + "api/state", timeout=10).json()["book"])
            if saved.net_quantities()[EDIT_CONTRACT] == EDIT_QUANTITY or (
                    time.monotonic() > deadline):
                break
            time.sleep(0.1)
        assert saved.net_quantities()[EDIT_CONTRACT] == EDIT_QUANTITY
        on_disk = kj.parse_book(json.loads(state_file.read_text())["book"])
        assert on_disk.net_quantities()[EDIT_CONTRACT] == EDIT_QUANTITY
        page.reload()
        page.wait_for_function("window.__dashboardReady === true", timeout=COMPUTE_S * 1000)
        _wait_idle(page)
        value = page.locator(
            f'#positions tr[data-id="{EDIT_CONTRACT}"] input[data-key="quantity"]')
        assert float(value.input_value()) == EDIT_QUANTITY
        assert float(page.locator("#rho-within").input_value()) == pytest.approx(rho)
        _check_tiles(page, after_edit)

        # rho_cross cannot go above rho_within: the UI clamps it, and the
        # book it sends stays valid.
        cross = page.locator("#rho-cross")
        cross.focus()
        cross.press("End")
        assert float(cross.input_value()) == pytest.approx(rho)
        _wait_idle(page, "window.dashboard.state.lastBook.hierarchy"
                         f".find(n => n.node === 'risk').rho === {rho}")
        assert page.evaluate("window.dashboard.state.serverError") is None

        # Ids are text in the charts: plotly's pseudo-HTML is escaped.
        shown = page.evaluate("""async () => {
            const m = await import('/static/js/charts.js');
            const P = await m.loadPlotly();
            const div = document.createElement('div');
            div.style.width = '400px'; div.style.height = '200px';
            document.body.append(div);
            const id = '<b>BOLD</b> & <a href="x">link</a>';
            await P.newPlot(div, [{type: 'bar', orientation: 'h', x: [1],
                                    y: [m.plotText(id)]}]);
            const text = div.querySelector('.ytick text').textContent;
            const markup = div.querySelectorAll('.ytick tspan, .ytick a').length;
            div.remove();
            return [text, markup];
        }""")
        assert shown == ['<b>BOLD</b> & <a href="x">link</a>', 0], shown

        # The server unreachable: the page says so, not "book rejected".
        page.route("**/api/margin*", lambda route: route.abort())
        page.click("#rerun")
        _wait_idle(page)
        banner = page.inner_text("#banner")
        assert "cannot be reached" in banner and "rejected" not in banner, banner
        assert "cannot be reached" in page.inner_text("#footer")
        page.unroute("**/api/margin*")
        # Back without an edit or Re-run: the page polls /api/health and recomputes
        # (it said "cannot be reached" until the next edit).
        _wait_idle(page, "window.dashboard.state.unreachable === false", timeout_s=30)
        assert page.locator("#banner").is_hidden()
        assert not errors, errors


# The elements wider than the viewport that no scrolling box holds: each one
# whose right edge is past it while every ancestor's left/right edges are within
# it (a table inside `.table-wrap` or `#clusters` scrolls there, not the page).
_SPILL = """(W) => {
  const out = [];
  const fits = (e) => { const r = e.getBoundingClientRect(); return r.right <= W + 0.5; };
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height || r.right <= W + 0.5) continue;
    let clipped = false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (['auto', 'scroll', 'hidden'].includes(getComputedStyle(a).overflowX) && fits(a)) {
        clipped = true; break;
      }
    }
    if (!clipped) out.push(`${el.tagName}#${el.id}.${el.className} right ${Math.round(r.right)}`);
  }
  return {width: document.documentElement.scrollWidth, spill: out.slice(0, 8)};
}"""


def test_the_page_fits_a_phone_screen(server, tmp_path):
    """At 390 px (a phone) the page never scrolls sideways: the header's actions
    and the horizon buttons wrap, the tiles take two columns, wide tables scroll
    in their own boxes, and the sensitivity selector fits its heading. At the
    default 1600 px nothing moved: the tiles sit in one row. The waterfall's
    labels side by side do not overlap at 1280 px (they did by 3 px); on the
    phone they are slanted."""
    url, _ = server
    labels = """() => [...document.querySelectorAll('#waterfall .xtick')].map(t => {
        const r = t.getBoundingClientRect(); return [t.textContent, r.left, r.right]; })"""
    angle = "document.getElementById('waterfall').layout.xaxis.tickangle"
    with dashboard_page(url, tmp_path / "profile") as (page, errors):
        tops = page.evaluate("[...document.querySelectorAll('#tiles .tile')]"
                             ".map(t => Math.round(t.getBoundingClientRect().top))")
        assert len(set(tops)) == 1, tops
        page.set_viewport_size({"width": 1280, "height": 800})  # the narrowest unslanted
        gen = page.evaluate("window.dashboard.state.resultGen")
        page.click("#rerun")
        _wait_idle(page, f"window.dashboard.state.resultGen > {gen}")
        ticks = page.evaluate(labels)
        assert len(ticks) >= 5 and page.evaluate(angle) == 0, ticks
        assert all(a[2] <= b[1] for a, b in zip(ticks, ticks[1:], strict=False)), ticks
        for width in (390, 700):
            page.set_viewport_size({"width": width, "height": 844})
            page.wait_for_timeout(200)
            fit = page.evaluate(_SPILL, width)
            assert fit["width"] <= width and not fit["spill"], (width, fit)
        assert page.locator("#horizon button").first.is_visible()
        page.set_viewport_size({"width": 390, "height": 844})
        page.click("#rerun")  # the charts are drawn for the width they have then
        _wait_idle(page, f"{angle} === -50")
        assert not errors, errors
