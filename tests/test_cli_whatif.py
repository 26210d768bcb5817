"""`kinetic-jax what-if` (SPEC.md §5.3) and the allocation column of
`kinetic-jax sensitivities`: the figures equal `kinetic-jax margin` of the traded
book, bad trades exit 2 naming the --trade."""

from __future__ import annotations

import json

import pytest
import tomli_w
from test_cli import run
from test_whatif import REFERENCE

import kinetic_jax as kj

# The plain sampler: there a what-if equals the margin of the traded book exactly.
ARGS = ("--scenarios", "4096", "--sampler", "plain")


def test_what_if_json_equals_margin_of_the_traded_book(tmp_path):
    trades = {"BTC-100K-DEC": 500.0, "PRES-2028-B": -3000.0}
    rc, out, err = run("what-if", str(REFERENCE), *ARGS, "--json",
                       *(f"--trade={cid}={q:g}" for cid, q in trades.items()))
    assert (rc, err) == (0, "")
    got = json.loads(out)
    book = kj.load_book(REFERENCE)
    q = book.net_quantities()
    for cid, v in trades.items():
        q[cid] += v
    traded = tmp_path / "traded.toml"
    traded.write_text(tomli_w.dumps(kj.book_to_dict(book.with_positions(q))))
    rc, out, err = run("margin", str(traded), *ARGS, "--json")
    after = json.loads(out)
    rc, out, err = run("margin", str(REFERENCE), *ARGS, "--json")
    before = json.loads(out)
    assert got["margin_after"] == pytest.approx(after["margin"], rel=1e-5)
    assert got["margin_before"] == pytest.approx(before["margin"], rel=1e-6)
    assert got["incremental"] == pytest.approx(after["margin"] - before["margin"], abs=0.05)
    assert (got["binding_before"], got["binding_after"]) == (before["binding"], after["binding"])
    assert got["trades"] == trades
    es_after = {c["name"]: c["es"] for c in after["clusters"]}
    es_before = {c["name"]: c["es"] for c in before["clusters"]}
    for c in got["clusters"]:
        assert c["es_after"] == pytest.approx(es_after[c["name"]], rel=1e-5, abs=1e-3)
        assert c["es_change"] == pytest.approx(es_after[c["name"]] - es_before[c["name"]],
                                               abs=0.05)
    assert got["report"]["margin"] == got["margin_after"]


def test_what_if_text():
    rc, out, err = run("what-if", str(REFERENCE), *ARGS, "--trade", "NBA-LAL=100",
                       "--trade", "NBA-LAL=-40")
    assert (rc, err) == (0, "")
    assert "trades: NBA-LAL +60" in out
    assert "margin" in out and "binding" in out and "Sports" in out


@pytest.mark.parametrize("trade, message", [
    ("NOPE=5", "--trade NOPE=5: unknown contract 'NOPE'"),
    ("NBA-LAL=ten", "--trade NBA-LAL=ten: 'ten' is not a number"),
    ("NBA-LAL=nan", "--trade NBA-LAL=nan: 'nan' is not finite"),
    ("NBA-LAL", "--trade NBA-LAL: expected ID=QTY"),
    ("=5", "--trade =5: expected ID=QTY"),
])
def test_bad_trades_exit_2_naming_the_trade(trade, message):
    rc, out, err = run("what-if", str(REFERENCE), *ARGS, "--trade", trade)
    assert rc == 2 and out == ""
    assert err.startswith(f"kinetic-jax: error: {message}")
    assert len(err.strip().splitlines()) == 1


def test_sensitivities_table_has_the_allocation_column():
    rc, out, err = run("sensitivities", str(REFERENCE), *ARGS, "--estimator", "hard",
                       "--top", "100")
    assert (rc, err) == (0, "")
    header = next(line for line in out.splitlines() if "Euler $" in line)
    assert header.rstrip().endswith("Alloc $")
    rows = [line for line in out.splitlines() if line.startswith("  ")
            and line.split()[0] in set(kj.load_book(REFERENCE).contract_ids)]
    total = sum(float(line.split()[-1].replace(",", "")) for line in rows)
    margin = float(out.split("margin $")[1].split()[0].replace(",", ""))
    assert total == pytest.approx(margin, abs=0.01 * len(rows))  # cents, rounded per row


def test_sensitivities_table_shows_the_buy_and_sell_slopes(tmp_path):
    # The reference book with NBA-LAL not held (a candidate): the table's dM/dq,
    # buy and sell columns are the JSON's; the candidates are ranked by the
    # margin change of a purchase (d_buy) or a short sale (-d_sell) per unit.
    book = kj.load_book(REFERENCE)
    q = book.net_quantities()
    path = tmp_path / "book.toml"
    path.write_text(tomli_w.dumps(kj.book_to_dict(book.with_positions({**q, "NBA-LAL": 0.0}))))
    args = ("sensitivities", str(path), *ARGS, "--estimator", "hard", "--top", "100")
    rc, out, err = run(*args)
    assert (rc, err) == (0, "")
    rc, js, err = run(*args, "--json")
    report = json.loads(js)
    header = next(line for line in out.splitlines() if "Euler $" in line).split()
    assert header[3:6] == ["dM/dq", "buy", "sell"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith("  ") and line.split()[0] in report["positions"]}
    assert len(rows) == len(report["positions"])
    kinks = 0
    for cid, p in report["positions"].items():
        shown = [float(x.replace(",", "")) for x in rows[cid][3:6]]
        assert shown == pytest.approx([p["d_quantity"], p["d_quantity_buy"],
                                       p["d_quantity_sell"]], abs=5e-5)
        kinks += abs(p["d_quantity_buy"] - p["d_quantity_sell"]) > 1e-3
    assert kinks > 0  # ties at a VaR: the two slopes differ somewhere
    lal = report["candidates"]["NBA-LAL"]
    lines = out.split("most margin-reducing trades")[1].splitlines()[1:]
    changes = {(line.split()[0], line.split()[1]): float(line.split()[-1]) for line in lines
               if line.startswith("  NBA-LAL")}
    assert changes[("NBA-LAL", "bought")] == pytest.approx(lal["d_quantity_buy"], abs=5e-5)
    assert changes[("NBA-LAL", "sold")] == pytest.approx(-lal["d_quantity_sell"], abs=5e-5)
