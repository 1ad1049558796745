"""edgeae.runtime.files: the one folder walker and the encode / decode pipelines over files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeae.errors import InputError
from edgeae.runtime import Decoder, Encoder
from edgeae.runtime.files import BATCH_NAME, decode_files, encode_files, find_files
from edgeae.runtime.images import IMAGE_SUFFIXES
from edgeae.runtime.payload import describe


def _digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def _tree(root: Path) -> list[Path]:
    """a/1.png a/sub/2.PNG b.txt .hidden.png .tmp/3.png z.jpg"""
    (root / "a" / "sub").mkdir(parents=True)
    (root / ".tmp").mkdir()
    files = [root / "a" / "1.png", root / "a" / "sub" / "2.PNG", root / "z.jpg", root / ".hidden.png",
             root / ".tmp" / "3.png"]
    for i, f in enumerate(files):
        Image.fromarray(_digits(1, i)[0]).save(f, format="PNG" if f.suffix.lower() == ".png" else "JPEG")
    (root / "b.txt").write_text("not an image")
    return files


def test_find_files_walks_recursively_sorted_skipping_hidden_and_other_suffixes(tmp_path):
    _tree(tmp_path)
    found = find_files([tmp_path], IMAGE_SUFFIXES)
    assert [f.source.relative_to(tmp_path).as_posix() for f in found] == ["a/1.png", "a/sub/2.PNG", "z.jpg"]
    assert [f.name.as_posix() for f in found] == ["a/1", "a/sub/2", "z"]
    assert found[1].output("out", ".eae") == Path("out/a/sub/2.eae")
    single = find_files([tmp_path / "b.txt"], IMAGE_SUFFIXES)  # a file named explicitly is taken as given
    assert [f.name for f in single] == [Path("b")]


def test_find_files_reports_missing_paths_and_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no such file or folder"):
        find_files([tmp_path / "nope"], IMAGE_SUFFIXES)
    problems: list[tuple[Path, str]] = []
    assert find_files([tmp_path / "nope", tmp_path / "empty"], IMAGE_SUFFIXES,
                      lambda p, why: problems.append((p, why))) == []
    assert [p.name for p, _ in problems] == ["nope", "empty"] and "no .bmp/" in problems[1][1]


def test_encode_then_decode_files_round_trip_with_a_sink(tiny_bundle, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    x = _digits(5)
    for i, a in enumerate(x):
        Image.fromarray(a).save(src / ("sub" if i % 2 else ".") / f"{i}.png")
    (src / "broken.png").write_bytes(b"not a png")
    enc, dec = Encoder(tiny_bundle), Decoder(tiny_bundle)
    sunk, skipped = [], []
    r = encode_files(enc, [src], tmp_path / "e", sink=sunk.append, skip=lambda p, why: skipped.append(p.name),
                     chunk=2)
    assert skipped == ["broken.png"] and r.skipped == 1 and r.images == 5 and len(r.written) == 5
    assert sunk == [w.target.read_bytes() for w in r.written]
    assert r.pixels == 5 * 64 and r.bpp == pytest.approx(8 * r.total_bytes / (5 * 64))
    expected = {f"{'sub/' if i % 2 else ''}{i}.eae": p for i, p in enumerate(enc.encode_each(x))}
    assert {w.target.relative_to(tmp_path / "e").as_posix(): w.target.read_bytes() for w in r.written} == expected
    d = decode_files(dec, [tmp_path / "e"], tmp_path / "d")
    assert d.images == 5 and d.skipped == 0
    for i, a in enumerate(dec.decode(enc.encode(x))):
        got = np.asarray(Image.open(tmp_path / "d" / ("sub" if i % 2 else ".") / f"{i}.png"))
        assert (got == a).all()


def test_batch_mode_writes_one_payload_and_names_its_items(tiny_bundle, tmp_path):
    for i, a in enumerate(_digits(3)):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    r = encode_files(Encoder(tiny_bundle), sorted(tmp_path.glob("*.png")), tmp_path / "e", batch=True, chunk=2)
    assert [w.target.name for w in r.written] == [BATCH_NAME] and r.written[0].items == 3
    assert [p.name for p in r.batch_sources] == ["0.png", "1.png", "2.png"]
    assert describe(r.written[0].target.read_bytes())["items"] == 3
    d = decode_files(Decoder(tiny_bundle), [r.written[0].target], tmp_path / "d")
    assert d.written[0].last == tmp_path / "d" / "batch-0002.png" and d.images == 3


def test_two_inputs_that_would_write_one_output_are_refused(tiny_bundle, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(_digits(1)[0]).save(tmp_path / sub / "x.png")
    with pytest.raises(InputError, match="would both write"):
        encode_files(Encoder(tiny_bundle), [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"], tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_decode_reads_a_bounded_prefix_and_skips_corrupt_payloads(tiny_bundle, tmp_path, monkeypatch):
    import edgeae.runtime.payload as wire

    good = Encoder(tiny_bundle).encode(_digits(1))
    (tmp_path / "a.eae").write_bytes(good)
    (tmp_path / "b.eae").write_bytes(good[:-3])
    why: dict[str, str] = {}
    r = decode_files(Decoder(tiny_bundle), [tmp_path], tmp_path / "d", skip=lambda p, w: why.update({p.name: w}))
    assert r.images == 1 and list(why) == ["b.eae"] and why["b.eae"].startswith("truncated")
    monkeypatch.setattr(wire, "MAX_PAYLOAD_BYTES", len(good) - 5)  # the read stops one byte past it
    why.clear()
    r = decode_files(Decoder(tiny_bundle), [tmp_path / "a.eae"], tmp_path / "d2", skip=lambda p, w: why.update({p.name: w}))
    assert r.images == 0 and f"payload of {len(good) - 4} bytes" in why["a.eae"]  # read MAX + 1, not the file
