"""The checkout must fit the GPU machine's carry: the device tool sends every tracked file, plus the photos packed
by `benchmarks/zoo_photo.sh pack` (`gpu-data/`, 24.4 MiB at q92; 31 MiB at q95 until session 14), and refuses a working tree over 64 MiB. In
session 12 the tracked files were 103 MiB (four sets of checkpoints), so every prepared GPU command would have
been refused before it started. Older checkpoints live in git history (checkpoints/README.md says where)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE_TREE_MIB = 64  # the device tool's limit on what travels
GPU_DATA_MIB = 25  # gpu-data/ as `zoo_photo.sh pack` writes it (q92, measured 2026-12-04: 24.4 MiB)
ZOO_MB = 25  # issue 15: the shipped zoo, fp32 and int8 encoders, in the repo


def _tracked() -> dict[str, int]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing tracked to measure")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return {n: (ROOT / n).stat().st_size for n in names.decode().split("\0") if n and (ROOT / n).is_file()}


def test_tracked_files_and_packed_photos_fit_the_device_carry() -> None:
    files = _tracked()
    total = sum(files.values()) / 2**20
    biggest = sorted(files.items(), key=lambda kv: -kv[1])[:5]
    assert total + GPU_DATA_MIB <= DEVICE_TREE_MIB - 1, (
        f"tracked files are {total:.1f} MiB: with gpu-data ({GPU_DATA_MIB} MiB) over the device tool's "
        f"{DEVICE_TREE_MIB} MiB; move old checkpoints to git history (checkpoints/README.md). Biggest: "
        + ", ".join(f"{n} {s / 2**20:.1f} MiB" for n, s in biggest))


def test_the_shipped_zoo_stays_within_its_budget() -> None:
    zoo = sum(s for n, s in _tracked().items() if n.startswith("edgeae/zoo/")) / 1e6
    assert zoo <= ZOO_MB, f"edgeae/zoo/ holds {zoo:.1f} MB, over issue 15's {ZOO_MB} MB"
