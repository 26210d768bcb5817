"""The ``kinetic-jax margin`` command (SPEC.md §4): the readable report, the JSON
object and its consistency (SPEC.md §2.5), overrides, add-on switches, exit
statuses and error messages.

Most runs are in-process (`kinetic_jax._cli.main`); a few run the installed
command as a subprocess to check exit statuses and that no traceback reaches
the user. Scenario counts are small: these tests check structure and the
relations between figures, not their Monte-Carlo accuracy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest
import tomli_w
from helpers import run_cli as run

import kinetic_jax._cache as kj_cache
import kinetic_jax._portfolio as portfolio_module
from kinetic_jax import correlation_of, default_hierarchy, enable_compilation_cache
from kinetic_jax._cli import main
from kinetic_jax._format import money

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"
N = 4096  # scenarios for runs whose figures do not matter

SPEC_KEYS = {"full_collateral", "worst_case_loss", "margin", "base", "floor", "addons",
             "binding", "capital_released", "standard_error", "confidence", "scenarios", "seed",
             "clusters", "correlation"}




def run_json(*argv: str) -> dict:
    rc, out, err = run("margin", *argv, "--json")
    assert (rc, err) == (0, ""), err
    return json.loads(out)


def _games(cluster: str, prefix: str, n: int, oi: float | None = None) -> list[dict]:
    extra = {} if oi is None else {"open_interest": oi}
    return [{"id": f"{prefix}{i}", "cluster": cluster, "type": "binary", "price": 0.5, **extra}
            for i in range(n)]


def _books() -> dict[str, dict]:
    two = _games("A", "a", 10, oi=5000) + _games("B", "b", 10, oi=5000)
    return {
        # Two independent clusters of 10 coin flips, long 1000 each: ES is
        # subadditive, so the top-2 floor (both clusters) exceeds the joint ES;
        # the worst case (all 20 lost, $10,000) is far in the tail. |q| / open
        # interest = 0.2 > 0.1 switches the liquidity add-on on. Plain sampling:
        # the default would margin these independent games by their exact law
        # (no Monte-Carlo error, no seed dependence: see the test below).
        "floor": {
            "model": {"scenarios": N, "seed": 5, "sampler": "plain"},
            "hierarchy": [{"node": "games", "parent": "root", "rho": 0.4}],
            "clusters": [{"name": "A", "parent": "games", "loading": 0.0},
                         {"name": "B", "parent": "games", "loading": 0.0}],
            "contracts": two,
            "positions": [{"contract": c["id"], "quantity": 1000} for c in two],
        },
        # One short binary: it loses its whole collateral with probability 0.55,
        # so the worst case caps the margin.
        "worst_case": {
            "model": {"scenarios": N},
            "contracts": [{"id": "G", "cluster": "Sports", "type": "binary", "price": 0.45}],
            "positions": [{"contract": "G", "quantity": -500}],
        },
        # Long every outcome of an event whose prices sum to 1: it cannot lose.
        "no_loss": {
            "model": {"scenarios": N},
            "contracts": [
                {"id": "A", "cluster": "Election", "type": "outcome", "event": "E",
                 "outcome": "A", "price": 0.5},
                {"id": "B", "cluster": "Election", "type": "outcome", "event": "E",
                 "outcome": "B", "price": 0.5},
            ],
            "positions": [{"contract": "A", "quantity": 100}, {"contract": "B", "quantity": 100}],
        },
        "empty": {"model": {"scenarios": N}},
    }


@pytest.fixture(scope="module")
def books(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("books")
    # A copy, so that every test sees the same reference book.
    reference = REFERENCE.read_text()
    (root / "reference.toml").write_text(reference)
    paths = {"reference": str(root / "reference.toml")}
    for name, data in _books().items():
        path = root / f"{name}.toml"
        path.write_text(tomli_w.dumps(data))
        paths[name] = str(path)
    bad = root / "bad_price.toml"
    bad.write_text(reference.replace("price = 0.55", "price = 1.55", 1))
    paths["bad_price"] = str(bad)
    return paths


@pytest.fixture(scope="module")
def reports(books) -> dict[str, dict]:
    """One JSON report per book (the reference book at N scenarios)."""
    out = {name: run_json(path) for name, path in books.items()
           if name not in ("reference", "bad_price")}
    out["reference"] = run_json(books["reference"], "--scenarios", str(N))
    return out


@pytest.fixture
def engine_must_not_run(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the engine ran")

    monkeypatch.setattr(portfolio_module, "margin_jit", fail)


# ---- the JSON object ---------------------------------------------------------------


def test_json_is_one_object_with_every_spec_key(books):
    rc, out, err = run("margin", books["reference"], "--json", "--scenarios", str(N))
    assert (rc, err) == (0, "")
    report = json.loads(out)  # exactly one JSON document on stdout
    assert isinstance(report, dict)
    assert SPEC_KEYS <= set(report)
    assert set(report["addons"]) == {"mc_error", "liquidity", "stress"}
    assert all(isinstance(v, float) for v in report["addons"].values())
    assert report["binding"] in ("worst_case", "base", "floor")
    for key in ("scenarios", "seed"):
        assert isinstance(report[key], int) and not isinstance(report[key], bool)
    for key in SPEC_KEYS - {"addons", "binding", "clusters", "correlation", "scenarios", "seed"}:
        assert isinstance(report[key], float) and math.isfinite(report[key]), key
    for cluster in report["clusters"]:
        assert {"name", "gross", "es"} <= set(cluster)
    assert set(report["correlation"]) >= {"clusters", "matrix"}


def test_json_echoes_the_book_settings(reports):
    assert (reports["reference"]["confidence"], reports["reference"]["seed"]) == (0.99, 0)
    assert reports["reference"]["scenarios"] == N
    assert (reports["floor"]["seed"], reports["floor"]["scenarios"]) == (5, N)


@pytest.mark.parametrize("name, binding", [("reference", "base"), ("floor", "floor"),
                                           ("worst_case", "worst_case"),
                                           ("no_loss", "worst_case"),
                                           ("empty", "worst_case")])
def test_json_figures_are_consistent(reports, name, binding):
    r = reports[name]
    stressed = max(r["base"], r["floor"])
    addons = sum(r["addons"].values())
    assert all(v >= 0 for v in r["addons"].values())
    assert r["margin"] == pytest.approx(max(0.0, min(r["worst_case_loss"], stressed + addons)),
                                        rel=1e-6, abs=1e-6)
    assert 0 <= r["margin"] <= r["worst_case_loss"] + 1e-6 or r["worst_case_loss"] <= 0
    assert r["worst_case_loss"] <= r["full_collateral"] + 1e-6
    # SPEC.md §2.5 binding rule.
    if r["worst_case_loss"] <= stressed + addons:
        expected = "worst_case"
    else:
        expected = "base" if r["base"] >= r["floor"] else "floor"
    assert r["binding"] == expected == binding
    if r["full_collateral"] > 0:
        assert r["capital_released"] == pytest.approx(1 - r["margin"] / r["full_collateral"],
                                                      abs=1e-6)
    else:
        assert r["capital_released"] == 0
    # Clusters: gross is the full collateral of each cluster's positions; the
    # floor is the two largest cluster ES.
    assert sum(c["gross"] for c in r["clusters"]) == pytest.approx(r["full_collateral"])
    es = sorted((c["es"] for c in r["clusters"]), reverse=True)
    assert r["floor"] == pytest.approx(es[0] + es[1], rel=1e-6, abs=1e-6)
    assert [c["name"] for c in r["clusters"]] == r["correlation"]["clusters"]


def test_json_exact_figures_of_small_books(reports):
    # Closed forms: full collateral and worst case from the positions.
    w = reports["worst_case"]
    assert (w["full_collateral"], w["worst_case_loss"], w["margin"]) == (275.0, 275.0, 275.0)
    assert w["capital_released"] == 0.0
    n = reports["no_loss"]
    assert (n["full_collateral"], n["worst_case_loss"], n["margin"]) == (100.0, 0.0, 0.0)
    assert n["capital_released"] == 1.0
    e = reports["empty"]
    assert (e["full_collateral"], e["worst_case_loss"], e["margin"]) == (0.0, 0.0, 0.0)
    f = reports["floor"]
    assert (f["full_collateral"], f["worst_case_loss"]) == (10000.0, 10000.0)
    # Liquidity add-on: 20 positions of gross 500 at |q| / OI = 0.2, rate 1,
    # threshold 0.1: 20 * 500 * 0.1.
    assert f["addons"]["liquidity"] == pytest.approx(1000.0)


def test_json_correlation_follows_the_hierarchy(reports):
    ref = reports["reference"]["correlation"]
    assert ref["clusters"] == list(default_hierarchy().cluster_names)
    expected = correlation_of(default_hierarchy()).tolist()
    assert len(ref["matrix"]) == len(expected)
    for row, want in zip(ref["matrix"], expected):
        assert row == pytest.approx(want)
    floor = reports["floor"]["correlation"]
    assert floor["clusters"] == ["A", "B"]
    assert floor["matrix"][0] == pytest.approx([1.0, 0.4])
    assert floor["matrix"][1] == pytest.approx([0.4, 1.0])


# ---- overrides ---------------------------------------------------------------------


def test_overrides_are_used_and_echoed(books, reports):
    r = run_json(books["reference"], "--scenarios", "2048", "--seed", "7", "--confidence", "0.95")
    assert (r["scenarios"], r["seed"], r["confidence"]) == (2048, 7, 0.95)
    base = reports["reference"]
    assert r["full_collateral"] == base["full_collateral"]
    assert r["worst_case_loss"] == base["worst_case_loss"]
    assert r["base"] < base["base"]  # ES at 95% is below ES at 99% on this book


def test_same_seed_gives_identical_json_and_another_seed_does_not(books):
    argv = ("margin", books["floor"], "--json")
    first, second = run(*argv), run(*argv)
    assert first[0] == 0 and first == second
    other = json.loads(run(*argv, "--seed", "6")[1])
    assert other["seed"] == 6
    same = json.loads(first[1])
    # Other draws: the simulated figures move (the exact ones do not).
    assert [c["es"] for c in other["clusters"]] != [c["es"] for c in same["clusters"]]
    assert other["worst_case_loss"] == same["worst_case_loss"]


def test_default_sampler_margins_independent_games_by_their_exact_law(books):
    # Every game has loading 0: the default sampler (exact_block) margins the whole
    # book by its exact law, so no seed moves it and the Monte-Carlo add-on is 0.
    argv = ("margin", books["floor"], "--json", "--sampler", "exact_block")
    a, b = (json.loads(run(*argv, "--seed", s)[1]) for s in ("5", "6"))
    assert a["sampler"] == "exact_block" and a["exact_positions"] == 20
    assert a["base_standard_error"] == a["addons"]["mc_error"] == 0.0
    assert (a["base"], a["floor"], a["margin"]) == (b["base"], b["floor"], b["margin"])


@pytest.mark.parametrize("off", [["mc_error"], ["liquidity"], ["mc_error", "liquidity"]])
def test_no_addon_switches_an_addon_off(books, reports, off):
    argv = [x for name in off for x in ("--no-addon", name)]
    r = run_json(books["floor"], *argv)
    full = reports["floor"]
    assert all(full["addons"][name] > 0 for name in ("mc_error", "liquidity"))
    for name in full["addons"]:
        assert r["addons"][name] == (0.0 if name in off else full["addons"][name])
    for key in ("base", "floor", "worst_case_loss", "full_collateral"):
        assert r[key] == full[key]
    expected = min(r["worst_case_loss"], max(r["base"], r["floor"]) + sum(r["addons"].values()))
    assert r["margin"] == pytest.approx(expected, rel=1e-6)
    assert r["margin"] < full["margin"]


def test_book_addon_settings_are_respected(tmp_path):
    data = _books()["floor"]
    data["addons"] = {"liquidity": False, "mc_error_z": 1.0}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    r = run_json(str(path))
    assert r["addons"]["liquidity"] == 0.0
    assert r["addons"]["mc_error"] == pytest.approx(r["standard_error"], rel=1e-5)


BAD_OVERRIDES = [
    (["--scenarios", "0"], "--scenarios: 0 is outside [1, 16777216]"),
    (["--scenarios=-4096"], "--scenarios: -4096 is outside [1, 16777216]"),
    (["--scenarios", str(2**24 + 1)], "--scenarios: 16777217 is outside [1, 16777216]"),
    (["--scenarios", "50"], "--scenarios: 50 draws leave no tail at confidence 0.99: "
                            "need scenarios * (1 - confidence) >= 1"),
    (["--seed=-1"], "--seed: -1 is outside [0, 4294967295]"),
    (["--seed", str(2**32)], "--seed: 4294967296 is outside [0, 4294967295]"),
    (["--confidence", "1"], "--confidence: 1.0 is outside (0, 1)"),
    (["--confidence", "1.5"], "--confidence: 1.5 is outside (0, 1)"),
    (["--confidence", "0"], "--confidence: 0.0 is outside (0, 1)"),
    (["--confidence=-0.5"], "--confidence: -0.5 is outside (0, 1)"),
    (["--confidence", "nan"], "--confidence: nan is not finite"),
    (["--confidence", "inf"], "--confidence: inf is not finite"),
    # The book's 4096 scenarios leave no tail at 0.9999: the flag given is named.
    (["--confidence", "0.9999"], "--confidence: 4096 draws leave no tail at confidence "
                                 "0.9999: need scenarios * (1 - confidence) >= 1"),
    (["--scenarios", "100", "--confidence", "0.995"],
     "--scenarios: 100 draws leave no tail at confidence 0.995: "
     "need scenarios * (1 - confidence) >= 1"),
]


@pytest.mark.parametrize("flags, message", BAD_OVERRIDES)
def test_bad_override_exits_2_naming_the_flag(books, flags, message, capsys,
                                              engine_must_not_run):
    assert main(["margin", books["worst_case"], "--json", *flags]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"kinetic-jax: error: {message}\n"


@pytest.mark.parametrize("flags, message", [
    (["--scenarios", "abc"], "argument --scenarios: invalid int value: 'abc'"),
    (["--scenarios", "4096.0"], "argument --scenarios: invalid int value: '4096.0'"),
    (["--seed", "1e3"], "argument --seed: invalid int value: '1e3'"),
    (["--confidence", "high"], "argument --confidence: invalid float value: 'high'"),
    (["--no-addon", "margin"], "argument --no-addon: invalid choice: 'margin'"),
    (["--scenarios"], "argument --scenarios: expected one argument"),
    (["--nope"], "unrecognized arguments: --nope"),
])
def test_unparseable_flag_exits_2_naming_the_flag(books, flags, message, capsys,
                                                  engine_must_not_run):
    with pytest.raises(SystemExit) as info:
        main(["margin", books["worst_case"], *flags])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [[], ["margin"], ["hedge-fund", "x.toml"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: kinetic-jax" in capsys.readouterr().err


# ---- bad books -----------------------------------------------------------------------


def test_bad_book_exits_2_with_one_line(books, capsys, engine_must_not_run):
    assert main(["margin", books["bad_price"]]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("kinetic-jax: error: contracts[1] (id 'BTC-100K-DEC').price: "
                   "1.55 is outside [1e-06, 0.999999]\n")


@pytest.mark.parametrize("content, suffix, message", [
    (None, ".toml", "book: cannot read {path!r}: No such file or directory"),
    ("[model\n", ".toml", "book: {path} is not valid TOML: "),
    ('{"model": {}', ".json", "book: {path} is not valid JSON: "),
    ('{"model": {"seed": 1, "seed": 2}}', ".json", "book: key 'seed' given twice: 1, then 2"),
    ("[model]\nseed = nan\n", ".toml", "model.seed: nan is not an integer"),
    ("[model]\nconfidence = 1\n", ".toml", "model.confidence: 1.0 is outside (0, 1)"),
    ("[model]\nscenarios = -1\n", ".toml", "model.scenarios: -1 is outside [1, 16777216]"),
    ("[modle]\nseed = 1\n", ".toml", "book.modle: unknown key"),
])
def test_file_errors_exit_2_with_one_line(tmp_path, content, suffix, message, capsys,
                                          engine_must_not_run):
    path = tmp_path / f"book{suffix}"
    if content is not None:
        path.write_text(content)
    assert main(["margin", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("kinetic-jax: error: " + message.format(path=str(path)))
    assert err.count("\n") == 1


def test_bad_book_is_not_rescued_by_good_overrides(books, capsys, engine_must_not_run):
    # A book's own invalid setting is an error in the book, even when a flag
    # would replace it.
    assert main(["margin", books["bad_price"], "--scenarios", str(N)]) == 2
    assert "contracts[1] (id 'BTC-100K-DEC').price" in capsys.readouterr().err


def test_internal_error_exits_1_with_one_line(books, capsys, monkeypatch):
    monkeypatch.delenv("KINETIC_JAX_DEBUG", raising=False)
    monkeypatch.setattr(portfolio_module, "margin_jit",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    assert main(["margin", books["worst_case"]]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "kinetic-jax: internal error: RuntimeError: boom\n"


def test_a_closed_pipe_ends_quietly(books, monkeypatch):
    """``kinetic-jax margin BOOK | head`` with the reader gone before the report is
    written: exit 141 (128 + SIGPIPE), nothing on stderr, and stdout's descriptor
    pointed at /dev/null so the final flush cannot fail again."""
    import io

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone
    stdout = open(write_end, "w")  # noqa: SIM115 - closed below
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", err)
    try:
        assert main(["margin", books["worst_case"], "--scenarios", str(N)]) == 141
        stdout.write("more")
        stdout.flush()  # /dev/null now: no second BrokenPipeError
    finally:
        stdout.close()
    assert err.getvalue() == ""


def test_engine_fault_exits_1_not_2(books, capsys, monkeypatch):
    """A non-finite figure from valid input is the engine's fault: EngineError, exit
    1 (2 is for input errors), one line, no traceback."""
    real = portfolio_module.margin_jit

    def poisoned(*args, **kwargs):
        return jax.tree.map(lambda x: x * float("nan") if x.dtype.kind == "f" else x,
                            real(*args, **kwargs))

    monkeypatch.delenv("KINETIC_JAX_DEBUG", raising=False)
    monkeypatch.setattr(portfolio_module, "margin_jit", poisoned)
    assert main(["margin", books["worst_case"], "--scenarios", str(N)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("kinetic-jax: engine error: the engine produced a non-finite figure; "
                   "please report this book\n")


# ---- the readable report -----------------------------------------------------------------


def test_text_report(books, reports, capsys):
    assert main(["margin", books["reference"], "--scenarios", str(N)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    r = reports["reference"]  # the same book, seed and scenarios
    lines = out.splitlines()
    assert lines[0] == f"kinetic-jax margin report: {books['reference']}"
    assert lines[1] == f"scenarios {N:,} | seed 0 | confidence 0.99"

    def line(label: str) -> str:
        found = [x for x in lines if x.strip().startswith(label)]
        assert len(found) == 1, (label, out)
        return found[0]

    assert line("Full collateral").split()[-1] == money(r["full_collateral"])
    assert line("Worst-case loss").split()[-1] == money(r["worst_case_loss"])
    margin = line("Portfolio margin")
    assert money(r["margin"]) in margin and margin.endswith(f"binding: {r['binding']}")
    assert line("Capital released").split()[-1] == f"{r['capital_released']:.1%}"
    for name, amount in r["addons"].items():
        assert line(f"add-on: {name}").split()[-1] == f"{amount:,.2f}"
    assert line("base (joint ES)").split()[3] == f"{r['base']:,.2f}"
    assert line("floor (top-2 clusters)").split()[-1] == f"{r['floor']:,.2f}"
    # Per-cluster table: name, positions, gross, ES.
    header = lines.index(next(x for x in lines if x.split()[:2] == ["cluster", "positions"]))
    for i, c in enumerate(r["clusters"]):
        row = lines[header + 1 + i].split()
        assert row[0] == c["name"]
        assert row[2:4] == [f"{c['gross']:,.2f}", f"{c['es']:,.2f}"]
    # Correlation matrix, from the LCA rule.
    corr = lines.index("Inter-cluster factor correlation (LCA rule)")
    matrix = r["correlation"]["matrix"]
    for i, name in enumerate(r["correlation"]["clusters"]):
        row = lines[corr + 2 + i].split()
        assert row[0] == name
        assert [float(x) for x in row[1:]] == pytest.approx(matrix[i], abs=0.005)


def test_text_report_of_an_empty_book(books, capsys):
    assert main(["margin", books["empty"]]) == 0
    out = capsys.readouterr().out
    assert "Portfolio margin" in out and "$0.00" in out and "binding: worst_case" in out


# ---- as a real command ---------------------------------------------------------------------


def _command() -> list[str]:
    script = Path(sys.executable).parent / "kinetic-jax"
    if script.exists():
        return [str(script)]
    found = shutil.which("kinetic-jax")
    return [found] if found else [sys.executable, "-m", "kinetic_jax._cli"]


def _subprocess(argv: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KINETIC_JAX_DEBUG"}
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def test_command_bad_book_exits_2_without_traceback(books):
    proc = _subprocess([*_command(), "margin", books["bad_price"], "--json"])
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == ("kinetic-jax: error: contracts[1] (id 'BTC-100K-DEC').price: "
                           "1.55 is outside [1e-06, 0.999999]\n")


def test_module_bad_override_exits_2_without_traceback(books):
    proc = _subprocess([sys.executable, "-m", "kinetic_jax._cli", "margin", books["worst_case"],
                        "--confidence", "2"])
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "kinetic-jax: error: --confidence: 2.0 is outside (0, 1)\n"


@pytest.mark.xdist_group("test_cli_command_without_cache")
def test_command_json_matches_in_process(command_without_cache, reports):
    _, proc = command_without_cache  # the installed command (its cache off changes nothing)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    r = json.loads(proc.stdout)
    expected = reports["floor"]
    assert set(r) == set(expected)
    for key in ("full_collateral", "worst_case_loss", "margin", "base", "floor",
                "capital_released", "standard_error"):
        assert r[key] == pytest.approx(expected[key], rel=1e-6), key
    assert (r["binding"], r["scenarios"], r["seed"]) == ("floor", N, 5)


# ---- the persistent compilation cache (kinetic_jax.enable_compilation_cache) ----------------

CACHE_VARS = ("KINETIC_JAX_CACHE_DIR", "XDG_CACHE_HOME", "JAX_COMPILATION_CACHE_DIR",
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")

# Runs the CLI in a child interpreter and counts JAX's persistent-cache events:
# compile requests, hits, and programs JAX will not store because they call back
# into Python (host callbacks, e.g. an `eqx.error_if` check).
COUNTING_CLI = """
import logging, sys, jax.export, jax.monitoring
from kinetic_jax._cli import main
events = {"requests": 0, "hits": 0, "callbacks": 0, "exports": 0, "loads": 0}
def counted(name, real):
    def call(*args, **kwargs):
        events[name] += 1
        return real(*args, **kwargs)
    return call
jax.export.export = counted("exports", jax.export.export)
jax.export.deserialize = counted("loads", jax.export.deserialize)
def listen(event, **kwargs):
    if event == "/jax/compilation_cache/compile_requests_use_cache":
        events["requests"] += 1
    elif event == "/jax/compilation_cache/cache_hits":
        events["hits"] += 1
class Uncacheable(logging.Handler):
    def emit(self, record):
        if "because it uses host callbacks" in record.getMessage():
            events["callbacks"] += 1
compiler_log = logging.getLogger("jax._src.compiler")
compiler_log.setLevel(logging.DEBUG)
compiler_log.addHandler(Uncacheable())
jax.monitoring.register_event_listener(listen)
rc = main(sys.argv[1:])
print(" ".join(f"{k}={v}" for k, v in events.items()), file=sys.stderr)
sys.exit(rc)
"""


def _cache_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """The environment of a CLI child: no cache setting inherited from the test
    session (its JAX_* variables included); HOME inside tmp_path."""
    out = {k: v for k, v in os.environ.items() if k not in (*CACHE_VARS, "KINETIC_JAX_DEBUG")}
    out["HOME"] = str(tmp_path / "home")
    out["JAX_PLATFORMS"] = out.get("JAX_PLATFORMS", "cpu")
    out.update(env)
    return out


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow  # three runs of the installed command: 5 s
def test_second_run_loads_its_programs_from_the_cache(books, tmp_path):
    """First run: no cache variable, so the cache goes to $XDG_CACHE_HOME/kinetic_jax/jax
    and is filled, the engine's exported programs under programs/. Second run,
    pointed there by KINETIC_JAX_CACHE_DIR: every engine program is read from
    programs/ (none traced and exported again), every compile request is a
    persistent-cache hit except the programs JAX refuses to store (those with host
    callbacks), nothing new is written, and the report is the same."""
    xdg = tmp_path / "xdg"
    first = subprocess.run([*_command(), "margin", books["floor"], "--json"],
                           capture_output=True, text=True, timeout=120,
                           env=_cache_env(tmp_path, XDG_CACHE_HOME=str(xdg)))
    assert (first.returncode, first.stderr) == (0, "")
    cache = xdg / "kinetic_jax" / "jax"
    written = _files(cache)
    assert any(name.endswith("-cache") for name in written), written
    stored = [name for name in written if name.startswith("programs/")]
    assert any(name.startswith("programs/margin_arrays-") for name in stored), written
    assert not (tmp_path / "home").exists()  # XDG_CACHE_HOME wins over ~/.cache

    second = subprocess.run(
        [sys.executable, "-c", COUNTING_CLI, "margin", books["floor"], "--json"],
        capture_output=True, text=True, timeout=120,
        env=_cache_env(tmp_path, KINETIC_JAX_CACHE_DIR=str(cache)))
    assert second.returncode == 0, second.stderr
    counts = dict(part.split("=") for part in second.stderr.strip().splitlines()[-1].split())
    requests, hits, callbacks, exports, loads = (
        int(counts[k]) for k in ("requests", "hits", "callbacks", "exports", "loads"))
    # Every program is cacheable (no host callbacks in the engine) and found.
    assert hits > 0 and callbacks == 0 and hits == requests, second.stderr
    assert exports == 0 and loads == len(stored), second.stderr
    assert _files(cache) == written
    assert json.loads(second.stdout) == json.loads(first.stdout)


@pytest.fixture(scope="module")
def command_without_cache(books, tmp_path_factory):
    """``(directory, process)``: the installed command, ``margin`` of the floor book
    with ``--json``, run with KINETIC_JAX_CACHE_DIR=off and HOME and XDG_CACHE_HOME
    inside the (otherwise empty) directory. One run serves the two tests below (a
    child compiling without a cache is one of the suite's dearest steps)."""
    tmp_path = tmp_path_factory.mktemp("command_without_cache")
    proc = subprocess.run([*_command(), "margin", books["floor"], "--json"],
                          capture_output=True, text=True, timeout=120,
                          env=_cache_env(tmp_path, KINETIC_JAX_CACHE_DIR="off",
                                         XDG_CACHE_HOME=str(tmp_path / "xdg")))
    return tmp_path, proc


@pytest.mark.xdist_group("test_cli_command_without_cache")
def test_cache_switched_off_writes_nothing(command_without_cache):
    """KINETIC_JAX_CACHE_DIR=off: no file anywhere under HOME or XDG_CACHE_HOME
    (both inside tmp_path), no warning, and the report is the in-process one."""
    tmp_path, proc = command_without_cache
    assert (proc.returncode, proc.stderr) == (0, "")
    assert json.loads(proc.stdout)["scenarios"] == N
    assert _files(tmp_path) == set()


@pytest.mark.parametrize("value", ["off", "OFF", " off ", "0", ""])
def test_cache_off_values(monkeypatch, value):
    monkeypatch.setenv("KINETIC_JAX_CACHE_DIR", value)
    assert kj_cache.default_cache_dir() is None
    assert kj_cache.enable_compilation_cache() is None


def test_cache_location_precedence(monkeypatch, tmp_path):
    """KINETIC_JAX_CACHE_DIR, else an absolute XDG_CACHE_HOME, else ~/.cache."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KINETIC_JAX_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kj_cache.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("KINETIC_JAX_CACHE_DIR")
    assert kj_cache.default_cache_dir() == tmp_path / "xdg" / "kinetic_jax" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # ignored, as the XDG rules say
    assert kj_cache.default_cache_dir() == tmp_path / "home" / ".cache" / "kinetic_jax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kj_cache.default_cache_dir() == tmp_path / "home" / ".cache" / "kinetic_jax" / "jax"


def test_unusable_cache_directory_only_warns(tmp_path, capsys):
    """A cache path below a regular file cannot be created: the cache stays as it
    was (this session's), one warning line names the path, no exception."""
    before = jax.config.jax_compilation_cache_dir
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert enable_compilation_cache(blocker / "cache") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"kinetic-jax: warning: compilation cache off: cannot use "
                          f"'{blocker / 'cache'}'")
    assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.slow  # runs of the installed command: 4-5 s
def test_command_with_an_unusable_cache_still_answers(books, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([*_command(), "margin", books["worst_case"], "--json"],
                          capture_output=True, text=True, timeout=120,
                          env=_cache_env(tmp_path, KINETIC_JAX_CACHE_DIR=str(blocker / "c")))
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["binding"] == "worst_case"
    assert proc.stderr.startswith("kinetic-jax: warning: compilation cache off")
    assert "Traceback" not in proc.stderr
