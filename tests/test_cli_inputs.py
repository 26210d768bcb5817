"""Input handling of the command line: output paths checked before anything is
computed, the sweep's grid-size limit checked before any axis is built, batch
CSV row errors naming their file line, a UTF-8 byte order mark, and count flags
that must not be negative. Each bad input exits 2 with one line naming the flag
(or the file line) and the value.

Books are small (7 contracts, 4096 scenarios): these tests check messages and
exit statuses, not figures.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_cli as run

import kinetic_jax as kj
import kinetic_jax._sweep as sweep_module
from kinetic_jax import BookError

N = 4096
BOOK = """\
[model]
scenarios = 4096
seed = 0

[[contracts]]
id = "BTC-100K"
cluster = "BTC"
event = "BTC-DEC"
type = "above"
threshold = 100000
price = 0.55

[[contracts]]
id = "BTC-110K"
cluster = "BTC"
event = "BTC-DEC"
type = "above"
threshold = 110000
price = 0.40

[[contracts]]
id = "EL-A"
cluster = "Election"
event = "PRES"
type = "outcome"
outcome = "A"
price = 0.40

[[contracts]]
id = "EL-B"
cluster = "Election"
event = "PRES"
type = "outcome"
outcome = "B"
price = 0.30

[[contracts]]
id = "G1"
cluster = "Sports"
type = "binary"
price = 0.5

[[contracts]]
id = "G2"
cluster = "Sports"
type = "binary"
price = 0.6

[[contracts]]
id = "P1"
cluster = "Parlays"
type = "parlay"
legs = ["G1", "G2"]
price = 0.3

[[positions]]
contract = "BTC-100K"
quantity = 1000
[[positions]]
contract = "EL-A"
quantity = -1000
[[positions]]
contract = "P1"
quantity = 200
"""


@pytest.fixture
def book(tmp_path) -> str:
    path = tmp_path / "small.toml"
    path.write_text(BOOK)
    return str(path)


@pytest.fixture
def accounts(tmp_path) -> str:
    path = tmp_path / "accounts.csv"
    path.write_text("account,contract,quantity\nalice,G1,100\n")
    return str(path)


@pytest.fixture
def nothing_computed(monkeypatch):
    """Fails the test if a sweep, a batch or sensitivities start computing."""
    def fail(*args, **kwargs):
        raise AssertionError("the engine ran")

    for name in ("sweep", "margin_accounts", "sensitivities", "plot_sweep"):
        monkeypatch.setattr(kj, name, fail)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kinetic-jax: error: "), err
    return lines[0]


# ---- 1. output paths are checked before anything is computed ----------------------


def _bad_paths(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, what the message says about it)."""
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    return {
        "missing directory": (str(tmp_path / "nope" / "out.{ext}"), "does not exist"),
        "file as directory": (str(a_file / "out.{ext}"), "is not a directory"),
    }


@pytest.mark.parametrize("case", ["missing directory", "file as directory"])
@pytest.mark.parametrize("flag, ext", [("--out", "csv"), ("--out", "npz"), ("--plot", "png")])
def test_sweep_unwritable_output_exits_2_before_computing(book, tmp_path, case, flag, ext,
                                                          nothing_computed):
    path, says = _bad_paths(tmp_path)[case]
    path = path.format(ext=ext)
    rc, out, err = run("sweep", book, "--vary", "rho.risk=0:0.3:2", "--scenarios", str(N),
                       flag, path)
    assert rc == 2, err
    line = _one_error_line(err)
    assert line.startswith(f"kinetic-jax: error: {flag}: {path!r}"), line
    assert says in line
    assert out == ""


@pytest.mark.parametrize("case", ["missing directory", "file as directory"])
def test_batch_unwritable_output_exits_2_before_computing(book, accounts, tmp_path, case,
                                                          nothing_computed):
    path, says = _bad_paths(tmp_path)[case]
    path = path.format(ext="csv")
    rc, out, err = run("batch", book, accounts, "--out", path)
    assert rc == 2, err
    line = _one_error_line(err)
    assert line.startswith(f"kinetic-jax: error: --out: {path!r}"), line
    assert says in line
    assert out == ""


def test_output_path_that_is_a_directory_exits_2(book, accounts, tmp_path,
                                                 nothing_computed):
    folder = tmp_path / "results.csv"
    folder.mkdir()
    rc, _, err = run("batch", book, accounts, "--out", str(folder))
    assert rc == 2
    assert _one_error_line(err) == f"kinetic-jax: error: --out: {str(folder)!r} is a directory"
    rc, _, err = run("sweep", book, "--vary", "rho.risk=0:0.3:2", "--out", str(folder))
    assert rc == 2
    assert _one_error_line(err) == f"kinetic-jax: error: --out: {str(folder)!r} is a directory"


def test_plot_in_a_format_matplotlib_cannot_write_exits_2(book, tmp_path, nothing_computed):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "margin.xyz")
    rc, _, err = run("sweep", book, "--vary", "rho.risk=0:0.3:2", "--plot", path)
    assert rc == 2
    line = _one_error_line(err)
    assert line.startswith(f"kinetic-jax: error: --plot: {path!r}: 'xyz' is not an image "
                           f"format"), line


def test_writable_outputs_are_written(book, accounts, tmp_path):
    out = tmp_path / "grid.csv"
    rc, _, err = run("sweep", book, "--vary", "rho.risk=0:0.3:2", "--scenarios", str(N),
                     "--json", "--out", str(out))
    assert (rc, err) == (0, "")
    assert out.read_text().startswith("rho.risk,")
    out = tmp_path / "accounts_out.csv"
    rc, _, err = run("batch", book, accounts, "--json", "--out", str(out))
    assert (rc, err) == (0, "")
    assert out.read_text().splitlines()[1].startswith("alice,")


# ---- 2. the grid-size limit before any axis is built ------------------------------


@pytest.fixture
def no_huge_axis(monkeypatch):
    """Fails the test if an axis of more values than a grid may hold is built."""
    linspace = np.linspace

    def guarded(start, stop, num=50, *args, **kwargs):
        if num > sweep_module.MAX_GRID_POINTS:
            raise AssertionError(f"an axis of {num:,} values was built")
        return linspace(start, stop, num, *args, **kwargs)

    monkeypatch.setattr(sweep_module.np, "linspace", guarded)


def test_sweep_count_over_the_limit_exits_2_before_building_the_axis(book, no_huge_axis,
                                                                      monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the book was loaded")

    monkeypatch.setattr(kj, "load_book", no_load)
    rc, out, err = run("sweep", book, "--vary", "rho.risk=0:0.3:100000000")
    assert rc == 2, err
    assert _one_error_line(err) == ("kinetic-jax: error: --vary: the grid has 100,000,000 "
                                    "points, over the limit of 1,048,576")
    assert out == ""


def test_sweep_grid_product_over_the_limit_exits_2_before_loading(book, no_huge_axis,
                                                                   monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the book was loaded")

    monkeypatch.setattr(kj, "load_book", no_load)
    rc, _, err = run("sweep", book, "--vary", "rho.risk=0:0.3:2000",
                     "--vary", "confidence=0.9:0.99:2000")
    assert rc == 2, err
    assert _one_error_line(err) == ("kinetic-jax: error: --vary: the grid has 4,000,000 "
                                    "points, over the limit of 1,048,576")


def test_api_rejects_an_oversized_grid_before_building_it(book, no_huge_axis):
    with pytest.raises(BookError, match=r"the grid has 100,000,000 points, over the limit"):
        kj.parse_axis("rho.risk=0:0.3:100000000")
    with pytest.raises(BookError, match=r"the grid has 4,000,000 points, over the limit"):
        kj.sweep(kj.load_book(book), ["rho.risk=0:0.3:2000", "confidence=0.9:0.99:2000"])
    # at the limit itself: still a grid (only parsed here, not margined)
    assert len(kj.parse_axis("confidence=0.9:0.99:1048576").values) == 1 << 20


# ---- 3. an unknown contract in a batch CSV names its file line --------------------


def test_batch_unknown_contract_names_the_file_line(book, tmp_path):
    path = tmp_path / "accounts.csv"
    path.write_text("account,contract,quantity\nalice,G1,100\nbob,NOPE,5\n")
    rc, out, err = run("batch", book, str(path), "--json")
    assert rc == 1
    expected = f"{path} line 3: contract: unknown contract 'NOPE'"
    data = json.loads(out)
    assert [a["account"] for a in data["accounts"]] == ["alice", "bob"]
    assert data["accounts"][0]["margin"] is not None
    assert data["accounts"][1]["error"] == expected
    assert err.strip() == f"kinetic-jax: error: account 'bob': {expected}"


def test_read_accounts_checks_contracts_when_given(tmp_path):
    path = tmp_path / "accounts.csv"
    path.write_text("account,contract,quantity\nalice,G1,100\nbob,G1,1\nbob,NOPE,5\n"
                    "bob,ALSO-NOPE,5\n")
    accounts, errors = kj.read_accounts(str(path), ["G1", "G2"])
    assert errors == {"bob": f"{path} line 4: contract: unknown contract 'NOPE'"}
    assert accounts["alice"] == {"G1": 100.0}
    accounts, errors = kj.read_accounts(str(path))  # without the book: not checked
    assert errors == {}


# ---- 4. negative counts ------------------------------------------------------------


@pytest.mark.parametrize("top", ["-3", "-1"])
def test_sensitivities_negative_top_exits_2(book, top, nothing_computed):
    rc, out, err = run("sensitivities", book, "--top", top)
    assert rc == 2
    line = _one_error_line(err)
    assert line.startswith(f"kinetic-jax: error: --top: {top} is negative"), line
    assert out == ""


@pytest.mark.parametrize("flag, value, shown", [("--steps", "0", "0"), ("--steps", "-5", "-5"),
                                                ("--lot", "-1", "-1.0"), ("--cost", "-1", "-1.0"),
                                                ("--max-quantity", "-1", "-1.0")])
def test_hedge_bad_values_name_the_flag(book, flag, value, shown):
    rc, _, err = run("hedge", book, "--instrument", "G1", "--scenarios", str(N), flag, value)
    assert rc == 2
    line = _one_error_line(err)
    assert line.startswith(f"kinetic-jax: error: {flag}: {shown} "), line


@pytest.mark.parametrize("flag, value", [("--scenarios", "0"), ("--scenarios", "-5"),
                                         ("--seed", "-1")])
def test_grid_commands_bad_counts_name_the_flag(book, accounts, flag, value,
                                                nothing_computed):
    for argv in (["sweep", book, "--vary", "rho.risk=0:0.3:2"], ["batch", book, accounts]):
        rc, _, err = run(*argv, flag, value)
        assert rc == 2
        line = _one_error_line(err)
        assert line.startswith(f"kinetic-jax: error: {flag}: {value} is outside"), line


# ---- 5. a UTF-8 byte order mark ----------------------------------------------------


def test_batch_csv_with_a_byte_order_mark_is_read(book, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfaccount,contract,quantity\r\nalice,G1,100\r\n"
                     b"bob,EL-A,-50\r\n")
    accounts, errors = kj.read_accounts(str(path))
    assert (accounts, errors) == ({"alice": {"G1": 100.0}, "bob": {"EL-A": -50.0}}, {})
    rc, out, err = run("batch", book, str(path), "--json")
    assert (rc, err) == (0, "")
    assert [a["account"] for a in json.loads(out)["accounts"]] == ["alice", "bob"]
