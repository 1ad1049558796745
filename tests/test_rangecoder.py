"""The range coder's two backends write the same bytes, read each other's, and refuse every invalid body alike.

The numpy backend must write exactly constriction's bitstream (docs/FORMAT.md "Coder 1: range"): compared
over >= 10,000 random streams across table shapes, on known answers made by constriction 0.5 (so the numpy
backend is checked even where constriction is absent), and with lane framing. One test re-runs the entropy,
payload and range-coder tests plus Encoder/Decoder round trips with constriction made unimportable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeae.errors import CorruptStream
from edgeae.runtime import rangecoder as rc
from edgeae.runtime.rangecoder import MAX_TABLE, RangeCoder, RangeTables

ROOT = Path(__file__).resolve().parents[1]
HAVE_CONSTRICTION = rc.constriction_available()
needs_constriction = pytest.mark.skipif(not HAVE_CONSTRICTION, reason="constriction is not installed")
BLOCKED = os.environ.get("EDGEAE_TEST_CONSTRICTION_BLOCKED") == "1"


def random_table(rng: np.random.Generator, n: int, precision: int, kind: str) -> np.ndarray:
    """n integer frequencies >= 1 summing to 2**precision: uneven, peaked, or extreme (all mass on one)."""
    total = 1 << precision
    if n == 1:
        return np.array([total], np.int64)
    if kind == "extreme":  # maximal probability on one symbol, the smallest (1) on every other
        f = np.ones(n, np.int64)
        f[rng.integers(n)] += total - n
        return f
    if kind == "peaked":
        x = np.exp(-np.abs(np.arange(n) - rng.integers(n)) / rng.uniform(0.05, 4.0)) + 1e-12
    else:
        x = rng.random(n) ** 4
    f = 1 + np.floor(x / x.sum() * (total - n)).astype(np.int64)
    f[np.argmax(f)] += total - f.sum()
    return f


def random_streams(rng: np.random.Generator, tables: list[np.ndarray], count: int, max_len: int,
                   edge: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Streams drawn from their tables (runs of one table index, as callers order them), lengths 0..max_len;
    `edge` draws only the first and last symbol of each table."""
    streams = []
    for _ in range(count):
        n = int(rng.integers(0, max_len + 1))
        runs = np.sort(rng.integers(0, len(tables), int(rng.integers(1, 5))))
        index = np.repeat(runs, np.diff(np.linspace(0, n, len(runs) + 1).astype(int)))
        sizes = np.array([len(t) for t in tables])[index]
        symbols = np.where(rng.random(n) < 0.5, 0, sizes - 1) if edge else draw(rng, tables, index)
        streams.append((symbols.astype(np.int64), index.astype(np.int64)))
    return streams


def draw(rng: np.random.Generator, tables: list[np.ndarray], index: np.ndarray) -> np.ndarray:
    """One symbol per entry of `index`, drawn from its table."""
    u = rng.random(len(index))
    symbols = np.zeros(len(index), np.int64)
    for t in np.unique(index):
        cdf = np.cumsum(tables[t]) / tables[t].sum()
        m = index == t
        symbols[m] = np.minimum(np.searchsorted(cdf, u[m], side="right"), len(tables[t]) - 1)
    return symbols


def table_set(rng: np.random.Generator, case: int) -> tuple[list[np.ndarray], int]:
    precision = int(rng.integers(1, 25))
    sizes = [1, 2, 3, 5, 16, 255, 256, 1000, 4096]
    k = int(rng.integers(1, 5))
    kinds = ["uneven", "peaked", "extreme"]
    tables = []
    for i in range(k):
        n = int(rng.choice([s for s in sizes if s <= 1 << precision]))
        tables.append(random_table(rng, n, precision, kinds[(case + i) % 3]))
    return tables, precision


def both(tables: RangeTables) -> tuple[RangeCoder, RangeCoder]:
    return RangeCoder(tables, "constriction"), RangeCoder(tables, "numpy")


# --- known answers (made with constriction 0.5.0) ---------------------------------------------------------

KNOWN_TABLES = [[1, 2, 13], [14, 1, 1]]  # precision 4
KNOWN = [  # (symbols, table index, body hex)
    ([], [], ""),
    ([0], [0], "00000000"),
    ([2, 2, 1, 0], [0, 0, 0, 0], "86019061"),
    ([0, 1, 2, 0, 2, 1], [0, 0, 1, 1, 0, 1], "0f28f902"),
    ([2] * 40, [0] * 40, "c6cdefff"),
    ([1] * 30, [1] * 30, "cbedeeee4d87eaa341872aa953862aa9"),
]


@pytest.mark.parametrize("backend", ["numpy", pytest.param("constriction", marks=needs_constriction)])
def test_known_answers_from_constriction(backend):
    coder = RangeCoder(RangeTables(KNOWN_TABLES, 4), backend)
    streams = [(np.array(s, np.int64), np.array(i, np.int64)) for s, i, _ in KNOWN]
    assert [b.hex() for b in coder.encode(streams)] == [h for _, _, h in KNOWN]
    out = coder.decode([bytes.fromhex(h) for _, _, h in KNOWN], [i for _, i in streams])
    for (s, _), got in zip(streams, out, strict=True):
        np.testing.assert_array_equal(got, s)


# --- the two backends agree -------------------------------------------------------------------------------


@needs_constriction
def test_backends_write_identical_bytes_over_ten_thousand_random_streams():
    rng = np.random.default_rng(12)
    total = 0
    for case in range(40):
        tables, precision = table_set(rng, case)
        rt = RangeTables(tables, precision)
        con, npy = both(rt)
        streams = random_streams(rng, tables, 260, int(rng.choice([1, 4, 40, 300])), edge=case % 5 == 0)
        bodies = con.encode(streams)
        assert npy.encode(streams) == bodies, f"case {case}: precision {precision}, sizes {rt.sizes}"
        index = [i for _, i in streams]
        for coder in (con, npy):  # each decodes the other's bytes
            for (s, _), got in zip(streams, coder.decode(bodies, index), strict=True):
                np.testing.assert_array_equal(got, s)
        total += len(streams)
    assert total >= 10_000


def test_numpy_coder_in_memory_bounded_groups_writes_the_same_bytes(monkeypatch):
    rng = np.random.default_rng(8)
    tables = [random_table(rng, 16, 8, "peaked"), random_table(rng, 3, 8, "uneven"), np.array([256])]
    coder = RangeCoder(RangeTables(tables, 8), "numpy")
    streams = random_streams(rng, tables, 200, 90)
    whole = coder.encode(streams)
    monkeypatch.setattr(rc.NumpyBackend, "GROUP_SYMBOLS", 100)  # ~100 groups instead of one
    assert coder.encode(streams) == whole
    index = [i for _, i in streams]
    for (s, _), got in zip(streams, coder.decode(whole, index), strict=True):
        np.testing.assert_array_equal(got, s)
    last = max(i for i, (s, _) in enumerate(streams) if len(s) > 20)
    bad = list(whole)
    bad[last] = b"\xff" * max(8, len(whole[last]))
    with pytest.raises(CorruptStream, match=f"stream {last}:"):  # numbered across groups
        coder.decode(bad, index)


@needs_constriction
@pytest.mark.parametrize("precision", [1, 2, 16, 24])
def test_edge_symbols_and_extreme_probabilities(precision):
    total = 1 << precision
    n = min(total, 300)
    tables = [random_table(np.random.default_rng(n), n, precision, "extreme")]
    if total >= 3:
        tables.append(np.array([1, total - 2, 1]))  # tiny probabilities at both edges, the maximum inside
    tables.append(np.array([total]))  # one-symbol table: not coded
    rt = RangeTables(tables, precision)
    con, npy = both(rt)
    streams = []
    for t, f in enumerate(tables):
        last = len(f) - 1
        for sym in ([0] * 50, [last] * 50, [0, last] * 30, [int(np.argmax(f))] * 2000):
            streams.append((np.array(sym, np.int64), np.full(len(sym), t, np.int64)))
    mixed = np.concatenate([s for s, _ in streams]), np.concatenate([i for _, i in streams])
    streams.append(mixed)  # many table switches in one stream
    bodies = con.encode(streams)
    assert npy.encode(streams) == bodies
    for coder in (con, npy):
        for (s, _), got in zip(streams, coder.decode(bodies, [i for _, i in streams]), strict=True):
            np.testing.assert_array_equal(got, s)


def test_one_symbol_tables_cost_nothing_and_decode_to_zero():
    rt = RangeTables([[16], [8, 8]], 4)
    coder = RangeCoder(rt, "numpy")
    only = (np.zeros(100, np.int64), np.zeros(100, np.int64))
    mixed = (np.array([0, 1, 0, 0, 1]), np.array([0, 1, 0, 1, 1]))
    b_only, b_mixed = coder.encode([only, mixed])
    assert b_only == b""  # nothing coded: the empty stream
    assert b_mixed == coder.encode([(np.array([1, 0, 1]), np.array([1, 1, 1]))])[0]
    out = coder.decode([b_only, b_mixed], [only[1], mixed[1]])
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[1], mixed[0])
    with pytest.raises(ValueError, match="quantise"):
        coder.encode([(np.array([1]), np.array([0]))])  # a one-symbol table holds only 0


@needs_constriction
def test_largest_table_in_the_fast_suite():
    # 2**20 entries in CI; the manifest's largest (MAX_TABLE = 2**24 - 2) is the slow variant below
    _largest_table(1 << 20)


@needs_constriction
@pytest.mark.slow
def test_largest_table_the_coder_allows():
    _largest_table(MAX_TABLE)


def _largest_table(n: int) -> None:
    f = np.ones(n, np.int64)
    f[n // 2] += (1 << 24) - n
    rt = RangeTables([f, [1 << 23, 1 << 23]], 24)
    con, npy = both(rt)
    rng = np.random.default_rng(0)
    sym = np.concatenate([[0, n - 1, n // 2, n - 2, 1], rng.integers(0, n, 200)]).astype(np.int64)
    streams = [(sym, np.zeros(len(sym), np.int64)), (np.array([1, 0]), np.array([1, 1]))]
    bodies = con.encode(streams)
    assert npy.encode(streams) == bodies
    for coder in (con, npy):
        np.testing.assert_array_equal(coder.decode(bodies, [s[1] for s in streams])[0], sym)


def test_tables_beyond_the_coders_limits_are_refused():
    from edgeae.runtime import manifest

    assert manifest.MAX_TABLE == MAX_TABLE  # the manifest refuses what the coder cannot take
    with pytest.raises(ValueError, match="entries"):
        RangeTables([np.ones(MAX_TABLE + 1, np.int64)], 24)  # sums to 2**24 - 1 anyway: size is checked first
    with pytest.raises(ValueError, match="summing"):
        RangeTables([[1, 2]], 4)
    with pytest.raises(ValueError, match="precision"):
        RangeTables([[1, 1]], 25)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("constriction", marks=needs_constriction)])
def test_real_digits_latents_give_the_reference_payload_bodies(backend, monkeypatch):
    """The self-test bundle shipped in the package (real digits, its symbols, payloads made on x86-64 with
    constriction): both backends write exactly the reference bodies and read them back."""
    from edgeae.runtime import payload as wire
    from edgeae.runtime.entropy_models.factorized import Factorized
    from edgeae.runtime.manifest import load_manifest

    monkeypatch.setenv(rc.ENV, backend)
    here = ROOT / "edgeae" / "runtime" / "_selftest"
    model = Factorized(load_manifest(here / "bundle"))
    assert model.tables.backend == backend
    symbols = np.load(here / "symbols.npy")
    for name in ("reference-v1.eae", "reference.eae"):  # v1, and v2 (one lane each: the same bodies)
        bodies = list(wire.parse((here / name).read_bytes()).bodies)
        assert model.encode_symbols(symbols, lanes=False) == bodies == model.encode_symbols(symbols, lanes=True)
        np.testing.assert_array_equal(model.decode_symbols(bodies, symbols.shape[1:]), symbols)


# --- lanes -----------------------------------------------------------------------------------------------


def test_lane_rule_and_framing():
    assert rc.lane_count(0) == 1 and rc.lane_count(rc.LANE_SYMBOLS * 2 - 1) == 1
    assert rc.lane_count(rc.LANE_SYMBOLS * 7 + 3) == 7
    assert rc.lane_count(1 << 24) == rc.MAX_LANES
    b = rc.lane_bounds(10 * rc.LANE_SYMBOLS + 7)
    assert b[0] == 0 and b[-1] == 10 * rc.LANE_SYMBOLS + 7 and np.diff(b).max() - np.diff(b).min() <= 1
    rt = RangeTables([[8, 8], [15, 1]], 4)
    coder = RangeCoder(rt, "numpy")
    small = (np.array([0, 1, 1]), np.array([0, 0, 1]))
    assert coder.encode_lanes([small]) == coder.encode([small])  # one lane: exactly the v1 body
    n = rc.LANE_SYMBOLS * 5 + 11
    rng = np.random.default_rng(3)
    big = (rng.integers(0, 2, n), np.repeat([0, 1], [n // 2, n - n // 2]))
    body = coder.encode_lanes([big])[0]
    lanes = [(big[0][a:b], big[1][a:b]) for a, b in zip(rc.lane_bounds(n)[:-1], rc.lane_bounds(n)[1:], strict=True)]
    parts = coder.encode(lanes)
    head = b"".join(rc._varint(len(p) // 4) for p in parts[:-1])
    assert body == head + b"".join(parts)  # varint word counts of all lanes but the last, then the lanes
    np.testing.assert_array_equal(coder.decode_lanes([body], [big[1]])[0], big[0])


@needs_constriction
def test_backends_agree_on_lanes_for_items_of_many_sizes():
    rng = np.random.default_rng(5)
    tables = [random_table(rng, 64, 16, k) for k in ("peaked", "uneven", "peaked", "extreme")]
    rt = RangeTables(tables, 16)
    con, npy = both(rt)
    sizes = [0, 1, 7, rc.LANE_SYMBOLS - 1, 2 * rc.LANE_SYMBOLS, 5 * rc.LANE_SYMBOLS + 3, 13 * rc.LANE_SYMBOLS + 1]
    items = []
    for n in sizes:
        index = np.repeat(np.arange(4), np.diff(np.linspace(0, n, 5).astype(int)))
        items.append((draw(rng, tables, index), index))
    bodies = con.encode_lanes(items)
    assert npy.encode_lanes(items) == bodies
    for coder in (con, npy):
        for (s, _), got in zip(items, coder.decode_lanes(bodies, [i for _, i in items]), strict=True):
            np.testing.assert_array_equal(got, s)


def test_damaged_lane_framing_is_corrupt_stream():
    rt = RangeTables([[8, 8]], 4)
    coder = RangeCoder(rt, "numpy")
    n = 3 * rc.LANE_SYMBOLS
    item = (np.random.default_rng(0).integers(0, 2, n), np.zeros(n, np.int64))
    body = coder.encode_lanes([item])[0]
    lane = rc.LANE_SYMBOLS
    for bad in (body[:1], body[:-1], body[:-4], b"\x80" * 40, b"",
                rc._varint(lane + 3) + body[2:],  # a lane longer than its symbols allow
                rc._varint(10_000) + rc._varint(1) + body[2:]):  # lanes longer than the body
        with pytest.raises(CorruptStream):
            coder.decode_lanes([bad], [item[1]])


LANE_N = 2 * rc.LANE_SYMBOLS + 5  # two lanes
LANE_TABLES = RangeTables([[1, 2, 13], [4, 4, 4, 4]], 4)
LANE_INDEX = np.repeat([0, 1], [LANE_N // 2, LANE_N - LANE_N // 2])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=24), st.integers(0, 3))
def test_arbitrary_lane_bodies_decode_alike_or_are_corrupt_stream_in_both(head, cut):
    # a real two-lane body with its lane table (and the first words) replaced by arbitrary bytes
    real = RangeCoder(LANE_TABLES, "numpy").encode_lanes(
        [(np.random.default_rng(cut).integers(0, 3, LANE_N), LANE_INDEX)])[0]
    body = head + real[len(head) + cut:]
    got = _outcome(RangeCoder(LANE_TABLES, "numpy"), body, LANE_INDEX, lanes=True)
    if HAVE_CONSTRICTION:
        assert _outcome(RangeCoder(LANE_TABLES, "constriction"), body, LANE_INDEX, lanes=True) == got


def test_concurrent_decodes_share_the_caches_safely():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(4)
    tables = [random_table(rng, 32, 12, "peaked") for _ in range(3)]
    coder = RangeCoder(RangeTables(tables, 12), "numpy")
    batches = [random_streams(rng, tables, int(rng.integers(1, 40)), 300) for _ in range(24)]
    bodies = [coder.encode(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: coder.decode(bodies[i], [x for _, x in batches[i]]), range(len(batches))))
    for batch, out in zip(batches, outs, strict=True):
        for (s, _), got in zip(batch, out, strict=True):
            np.testing.assert_array_equal(got, s)


# --- invalid bodies ---------------------------------------------------------------------------------------

FUZZ_TABLES = RangeTables([[1, 2, 13], [1, (1 << 4) - 2, 1], [16], [4, 4, 4, 4]], 4)
FUZZ_WIDE = RangeTables([np.full(256, 1 << 16), [1, (1 << 24) - 2, 1]], 24)


def _outcome(coder: RangeCoder, body: bytes, index: np.ndarray, lanes: bool = False):
    try:
        return (coder.decode_lanes if lanes else coder.decode)([body], [index])[0].tolist()
    except CorruptStream:
        return "corrupt"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40), st.lists(st.integers(0, 3), max_size=12), st.booleans())
def test_arbitrary_bodies_decode_alike_or_are_corrupt_stream_in_both(body, index, wide):
    rt = FUZZ_WIDE if wide else FUZZ_TABLES
    index = np.array(index, np.int64) % len(rt)
    npy = RangeCoder(rt, "numpy")
    got = _outcome(npy, body, index)
    if got != "corrupt":
        assert len(got) == len(index) and all(0 <= s < rt.sizes[t] for s, t in zip(got, index, strict=True))
        assert npy.encode([(np.array(got, np.int64), index)])[0] == body  # canonical: one body per symbols
    if HAVE_CONSTRICTION:
        assert _outcome(RangeCoder(rt, "constriction"), body, index) == got


def test_structured_damage_is_refused_alike():
    rng = np.random.default_rng(9)
    rt = RangeTables([random_table(rng, 256, 16, "peaked"), random_table(rng, 256, 16, "uneven")], 16)
    tables = [rt._freqs[0], rt._freqs[1]]
    coders = [RangeCoder(rt, "numpy")] + ([RangeCoder(rt, "constriction")] if HAVE_CONSTRICTION else [])
    seen = {"corrupt": 0, "other": 0}
    for stream in random_streams(rng, tables, 150, 60):
        body = coders[0].encode([stream])[0]
        for bad in (body[:-4], body + b"\0\0\0\0", body + b"\xff\xff\xff\xff", b"\xff" * len(body),
                    bytes(len(body)), body[:4][::-1] + body[4:]):
            results = {str(_outcome(c, bad, stream[1])) for c in coders}
            assert len(results) == 1, (body.hex(), bad.hex())
            seen["corrupt" if results == {"corrupt"} else "other"] += 1
    assert seen["corrupt"] > 100  # most damage is caught by the coder itself (the payload CRC catches the rest)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("constriction", marks=needs_constriction)])
@pytest.mark.parametrize("lanes", [False, True])
def test_appended_or_altered_words_are_corrupt_stream_so_payloads_are_canonical(backend, lanes):
    # the decoder never reads a stream's last word past what its symbols need: these decoded as if absent
    coder = RangeCoder(LANE_TABLES, backend)
    enc, dec = (coder.encode_lanes, coder.decode_lanes) if lanes else (coder.encode, coder.decode)
    rng = np.random.default_rng(3)
    for n in (0, 1, 5, 300, LANE_N):
        index = np.zeros(n, np.int64) if n != LANE_N else LANE_INDEX
        symbols = rng.integers(0, 3, n)
        body = enc([(symbols, index)])[0]
        np.testing.assert_array_equal(dec([body], [index])[0], symbols)
        for extra in (b"\0\0\0\0", b"\x01\0\0\0", b"\0" * 8):
            with pytest.raises(CorruptStream):
                dec([body + extra], [index])
        if n:  # another last word: refused, or the one body of other symbols, never a second body of these
            for word in (b"\0\0\0\0", b"\xff\xff\xff\xff"):
                bad = body[:-4] + word
                got = _outcome(coder, bad, index, lanes)
                if bad != body and got != "corrupt":
                    assert got != symbols.tolist() and enc([(np.array(got), index)])[0] == bad


def test_oversized_and_misaligned_bodies_fail_before_decoding():
    coder = RangeCoder(FUZZ_TABLES, "numpy")
    with pytest.raises(CorruptStream, match="32-bit words"):
        coder.decode([b"\0" * 5], [np.zeros(1, np.int64)])
    with pytest.raises(CorruptStream, match="more data"):
        coder.decode([b"\0" * 4 * 1_000_000], [np.zeros(3, np.int64)])  # bounded by the symbol count


# --- selection --------------------------------------------------------------------------------------------


def test_backend_selection(monkeypatch):
    monkeypatch.setenv(rc.ENV, "numpy")
    assert rc.backend_name() == "numpy" and RangeCoder(FUZZ_TABLES).backend == "numpy"
    monkeypatch.setenv(rc.ENV, "fortran")
    with pytest.raises(ValueError, match="EDGEAE_CODER"):
        rc.backend_name()
    monkeypatch.delenv(rc.ENV)
    assert rc.backend_name() == ("constriction" if HAVE_CONSTRICTION else "numpy")
    if BLOCKED:
        assert not HAVE_CONSTRICTION
        monkeypatch.setenv(rc.ENV, "constriction")
        with pytest.raises(ValueError, match="not installed"):
            rc.backend_name()


# --- the runtime without constriction ---------------------------------------------------------------------

BLOCKER = '''
import sys

class _NoConstriction:
    def find_spec(self, name, path=None, target=None):
        if name == "constriction" or name.startswith("constriction."):
            raise ModuleNotFoundError("No module named 'constriction' (blocked for this test)", name=name)
        return None

sys.meta_path.insert(0, _NoConstriction())
'''


def run_without_constriction(tmp_path: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "EDGEAE_TEST_CONSTRICTION_BLOCKED": "1", "OMP_NUM_THREADS": "1"}
    env.pop(rc.ENV, None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(BLOCKED, reason="already the run without constriction")
def test_runtime_tests_pass_with_constriction_unimportable(tmp_path):
    probe = run_without_constriction(tmp_path, ["-c", "import edgeae.runtime.rangecoder as r; "
                                                      "print(r.backend_name(), r.constriction_available())"], 60)
    assert probe.stdout.split() == ["numpy", "False"], probe.stderr
    tests = ["tests/test_entropy.py", "tests/test_payload.py", "tests/test_rangecoder.py",
             "tests/test_runtime.py::test_each_step_composes_to_the_round_trip",
             "tests/test_runtime.py::test_batch_payload_holds_the_same_bodies_as_single_payloads"]
    res = run_without_constriction(tmp_path, ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                              "-m", "not slow", *tests], 300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and " failed" not in res.stdout
