"""Account batches (SPEC.md §5.3, kinetic_jax/_batch.py): every account's figures
equal the margin call of the book holding exactly its positions (same seed and
scenarios, float32 rounding), bad rows fail only their account, the CSV reader's
whole-file errors, and the ``kinetic-jax batch`` command's outputs and exit
statuses. Scenario counts are small (4,096): the equality holds at any count.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli as run

import kinetic_jax as kj
from kinetic_jax import BookError

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"
N = 4096
RTOL = 2e-6


@pytest.fixture(scope="module")
def book() -> kj.Book:
    return kj.load_book(REFERENCE)


def synthetic_accounts(book: kj.Book, n: int, seed: int = 0) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    ids = book.contract_ids
    out = {"whole-book": book.net_quantities(), "empty": {}}
    for a in range(n):
        pick = rng.choice(len(ids), int(rng.integers(1, 15)), replace=False)
        out[f"acct-{a}"] = {ids[i]: float(rng.integers(-3000, 3000)) for i in pick}
    return out


def test_each_account_is_the_margin_call_of_its_positions(book):
    """One shared simulation, and yet each account's figures are those of
    kj.portfolio_margin on the book holding that account's positions (several
    account blocks, a partial last block)."""
    accounts = synthetic_accounts(book, 9)
    result = kj.margin_accounts(book, accounts, scenarios=N, account_block=4)
    assert [a.account for a in result.accounts] == list(accounts)
    assert not result.failed
    for a in result.accounts:
        report = kj.portfolio_margin(book.with_positions(accounts[a.account]), scenarios=N,
                                     sampler="plain")  # a batch's sampler
        for k in ("margin", "base", "floor", "full_collateral", "worst_case_loss",
                  "capital_released", "standard_error"):
            assert getattr(a, k) == pytest.approx(getattr(report, k), rel=RTOL, abs=1e-3), (
                a.account, k)
        assert a.binding == report.binding
    empty = result.accounts[1]
    assert (empty.margin, empty.full_collateral, empty.capital_released) == (0.0, 0.0, 0.0)


def test_rows_are_netted_and_bad_rows_fail_their_account_only(book, tmp_path):
    path = tmp_path / "accounts.csv"
    path.write_text("account,contract,quantity\n"
                    "alice,BTC-100K-DEC,1000\n"
                    "bob,NOPE,5\n"
                    "alice,BTC-100K-DEC,-400\n"
                    "carol,ETH-5K-DEC,ten\n"
                    "\n"
                    "alice,ETH-5K-DEC,-200\n"
                    "dave,ETH-5K-DEC,1e300\n"
                    "erin,ETH-5K-DEC,nan\n"
                    "frank,ETH-5K-DEC\n"
                    "gina,ETH-5K-DEC,1e400\n")
    accounts, errors = kj.read_accounts(str(path))
    assert accounts["alice"] == {"BTC-100K-DEC": 600.0, "ETH-5K-DEC": -200.0}
    assert errors["carol"] == f"{path} line 5: quantity: 'ten' is not a number"
    assert errors["dave"].startswith(f"{path} line 8: quantity: 1e+300 is outside")
    assert errors["erin"] == f"{path} line 9: quantity: 'nan' is not finite"
    # Named as written (it was "inf is not finite").
    assert errors["gina"] == f"{path} line 11: quantity: '1e400' is not finite"
    assert errors["frank"].startswith(f"{path} line 10: expected 3 fields")
    result = kj.margin_accounts(book, accounts, scenarios=N, errors=errors)
    by = {a.account: a for a in result.accounts}
    assert by["bob"].error == "contract: unknown contract 'NOPE'" and by["bob"].margin is None
    assert {a.account for a in result.failed} == {"bob", "carol", "dave", "erin", "frank",
                                                  "gina"}
    report = kj.portfolio_margin(book.with_positions(accounts["alice"]), scenarios=N)
    assert by["alice"].margin == pytest.approx(report.margin, rel=RTOL)


@pytest.mark.parametrize("text, needle", [
    ("", "the header must be account,contract,quantity, got nothing"),
    ("name,contract,qty\nalice,BTC-100K-DEC,1\n", "got name,contract,qty"),
])
def test_unusable_files(tmp_path, text, needle):
    path = tmp_path / "a.csv"
    path.write_text(text)
    with pytest.raises(BookError, match=needle):
        kj.read_accounts(str(path))
    with pytest.raises(BookError, match="cannot read the accounts file"):
        kj.read_accounts(str(tmp_path / "missing.csv"))




def test_cli_batch(book, tmp_path):
    path = tmp_path / "accounts.csv"
    path.write_text("account,contract,quantity\nalice,BTC-100K-DEC,1000\n"
                    "alice,ETH-5K-DEC,-700\nbob,SPX-5500-BELOW-DEC,250\n")
    rc, out, err = run("batch", str(REFERENCE), str(path), "--scenarios", str(N), "--json",
                       "--out", str(tmp_path / "out.csv"))
    assert (rc, err) == (0, "")
    data = json.loads(out)
    assert (data["scenarios"], data["seed"], data["devices"]) == (N, 0, 1)
    assert [a["account"] for a in data["accounts"]] == ["alice", "bob"]
    keys = {"account", "margin", "base", "floor", "full_collateral", "worst_case_loss",
            "binding", "capital_released", "standard_error"}
    assert set(data["accounts"][0]) == keys
    alice = kj.portfolio_margin(book.with_positions({"BTC-100K-DEC": 1000, "ETH-5K-DEC": -700}),
                                scenarios=N)
    assert data["accounts"][0]["margin"] == pytest.approx(alice.margin, rel=RTOL)
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["account"] for r in rows] == ["alice", "bob"]
    assert float(rows[0]["margin"]) == pytest.approx(alice.margin, rel=1e-6)

    path.write_text("account,contract,quantity\nalice,BTC-100K-DEC,1000\nbob,NOPE,1\n")
    rc, out, err = run("batch", str(REFERENCE), str(path), "--scenarios", str(N), "--json")
    assert rc == 1
    data = json.loads(out)
    assert data["accounts"][1] == {"account": "bob", "margin": None, "base": None,
                                   "floor": None, "full_collateral": None,
                                   "worst_case_loss": None, "binding": None,
                                   "capital_released": None, "standard_error": None,
                                   "error": f"{path} line 3: contract: unknown "
                                            f"contract 'NOPE'"}
    assert f"account 'bob': {path} line 3: contract: unknown contract 'NOPE'" in err

    path.write_text("who,what\n")
    rc, out, err = run("batch", str(REFERENCE), str(path))
    assert rc == 2 and "the header must be account,contract,quantity" in err
    rc, out, err = run("batch", str(REFERENCE), str(tmp_path / "missing.csv"))
    assert rc == 2 and "cannot read the accounts file" in err


def test_partial_blocks_rows_input_and_stress_addon(book):
    """Rows given as (account, contract, quantity) triples (netted, quantities as
    text too), a scenario count that is not a whole number of draw blocks, and the
    stress add-on on: still each account's own margin call."""
    stressed = book.with_settings(stress_addon=True)
    rows = [("x", "BTC-100K-DEC", 4000), ("y", "ETH-5K-DEC", -2500), ("x", "SOL-200-DEC", 50),
            ("y", "BTC-100K-DEC", "12"), ("x", "BTC-100K-DEC", -1000), ("z", "NOPE", 1)]
    netted = {"x": {"BTC-100K-DEC": 3000.0, "SOL-200-DEC": 50.0},
              "y": {"ETH-5K-DEC": -2500.0, "BTC-100K-DEC": 12.0}}
    result = kj.margin_accounts(stressed, rows, scenarios=5000)
    assert [a.account for a in result.accounts] == ["x", "y", "z"]
    assert result.accounts[2].error == "contract: unknown contract 'NOPE'"
    for a in result.accounts[:2]:
        report = kj.portfolio_margin(stressed.with_positions(netted[a.account]),
                                     scenarios=5000)
        assert a.margin == pytest.approx(report.margin, rel=RTOL)
        assert a.standard_error == pytest.approx(report.standard_error, rel=1e-5)
        assert a.binding == report.binding


def test_accounts_with_perps_and_futures():
    """A horizon book: an account net short an underlying has no cap (None, JSON
    null, as in the margin report; it was inf, written as Infinity); figures
    equal the direct call's. Without a horizon a perp position fails its
    account, as the margin call refuses it (it was margined over the book's
    latest date)."""
    perps = kj.load_book(REFERENCE.parent / "perps_and_strip.toml")
    accounts = {"short-perp": {"BTC-PERP": -1.0},
                "strip": {"BTC>110K-Aug26": -2000.0, "SPX-FUT-Sep26": 2.0}}
    result = kj.margin_accounts(perps, accounts, scenarios=N)
    assert not result.failed
    for a in result.accounts:
        report = kj.portfolio_margin(perps.with_positions(accounts[a.account]), scenarios=N,
                                     sampler="plain")
        assert a.worst_case_loss == report.worst_case_loss  # None: no cap
        assert a.margin == pytest.approx(report.margin, rel=RTOL)
    assert result.accounts[0].worst_case_loss is None
    assert result.accounts[1].worst_case_loss is not None
    json.dumps(result.to_dict(), allow_nan=False)  # no Infinity

    resolution = perps.with_positions({}).with_settings(horizon_days=None)
    result = kj.margin_accounts(resolution, {"perp": {"BTC-PERP": 1.0, "BTC>110K-Aug26": 5.0},
                                             "binary": {"BTC>110K-Aug26": 5.0}}, scenarios=N)
    assert [a.account for a in result.failed] == ["perp"]
    assert "'BTC-PERP': a perp position needs a liquidation horizon" in result.failed[0].error
    with pytest.raises(BookError, match="needs a liquidation horizon"):
        kj.portfolio_margin(resolution.with_positions({"BTC-PERP": 1.0}))


def test_cli_batch_text_of_an_account_without_a_cap(tmp_path):
    """The text table shows 'unbounded' where an account has no worst case (it
    raised a TypeError, exit 1, after the header), and every account's row."""
    path = tmp_path / "perp.csv"
    path.write_text("account,contract,quantity\nshort,BTC-PERP,-1\nlong,BTC-PERP,1\n")
    rc, out, err = run("batch", str(REFERENCE.parent / "perps_and_strip.toml"), str(path),
                       "--scenarios", str(N))
    assert rc == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith("  ") and line.split()[0] in ("short", "long")}
    assert rows["short"][3] == "unbounded" and rows["long"][3] != "unbounded", out
