"""Pretrained bundles shipped inside the package, loadable by name from the torch-free install.

    edgeae/zoo/index.json          which models exist, their qualities, measured rate-distortion, model card
    edgeae/zoo/<model>-q<k>/       one ordinary bundle per quality (manifest.json, fp32 + int8 graphs)
    edgeae/zoo/<model>/            or one multi-quality bundle that every quality shares (index `point`)

A name `MODEL:K` (e.g. "photo:3") stands for quality K of MODEL anywhere a bundle folder is accepted:
`Encoder("photo:3")`, `Bundle.open("photo:3")`, `edgeae encode img.jpg --bundle photo:3`. A path that exists
always wins over a name. `edgeae models --pretrained` lists the zoo. Stdlib only: no torch, no onnx.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgeae.errors import BundleError
from edgeae.fsutil import read_json_bounded

ZOO_DIR = Path(__file__).resolve().parent
INDEX_NAME = "index.json"
INDEX_SCHEMA = "edgeae.zoo"
MAX_INDEX_BYTES = 1 << 20
_NAME = re.compile(r"^([a-z][a-z0-9_-]{0,63}):([0-9]{1,3})$")


def is_name(text: object) -> bool:
    """True for a `MODEL:K` zoo name that is not also an existing path."""
    return isinstance(text, str) and bool(_NAME.match(text)) and not Path(text).exists()


def index(root: Path | None = None) -> dict[str, Any]:
    """The zoo index ({"models": {}} when nothing is shipped), validated enough to resolve names."""
    path = (root or ZOO_DIR) / INDEX_NAME
    if not path.is_file():
        return {"schema": INDEX_SCHEMA, "version": 1, "models": {}}
    data = read_json_bounded(path, MAX_INDEX_BYTES, BundleError, hint="reinstall edgeae")
    if not isinstance(data, dict) or data.get("schema") != INDEX_SCHEMA or not isinstance(data.get("models"), dict):
        raise BundleError(f"{path} is not an edgeae zoo index; reinstall edgeae")
    return data


def resolve(name: str, root: Path | None = None) -> Path:
    """`MODEL:K` -> the folder of that pretrained bundle (BundleError, listing what exists, if unknown)."""
    return locate(name, root)[0]


def locate(name: str, root: Path | None = None) -> tuple[Path, int]:
    """`MODEL:K` -> (the bundle folder, the operating point of a multi-quality bundle, or 0). An index quality
    entry names its `bundle` folder and, when several qualities share one bundle, its `point` in it."""
    m = _NAME.match(name)
    if not m:
        raise BundleError(f"{name!r} is not a pretrained model name (MODEL:QUALITY, e.g. photo:3)")
    model, quality = m.group(1), str(int(m.group(2)))
    root = root or ZOO_DIR
    models = index(root)["models"]
    if model not in models:
        known = ", ".join(sorted(models)) or "none in this install"
        raise BundleError(f"unknown pretrained model {model!r} (known: {known}); `edgeae models --pretrained` "
                          "lists them")
    qualities = models[model].get("qualities", {})
    if quality not in qualities:
        raise BundleError(f"pretrained model {model!r} has no quality {quality}; choose one of "
                          f"{', '.join(sorted(qualities, key=int))}")
    folder = str(qualities[quality].get("bundle", ""))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", folder) or folder in (".", ".."):
        raise BundleError(f"zoo index entry {name} names the folder {folder!r}, which is not a plain folder name")
    path = root / folder
    if not path.is_dir():
        raise BundleError(f"pretrained bundle {name} is listed but {path} is missing; reinstall edgeae")
    point = qualities[quality].get("point", 0)
    if isinstance(point, bool) or not isinstance(point, int) or not 0 <= point <= 255:
        raise BundleError(f"zoo index entry {name} has point {point!r}, not an operating point 0..255; reinstall edgeae")
    return path, point


def pretrained(root: Path | None = None) -> list[dict[str, Any]]:
    """One row per (model, quality): name, bundle folder and the measured figures from the index."""
    rows = []
    for model, entry in sorted(index(root)["models"].items()):
        for q, point in sorted(entry.get("qualities", {}).items(), key=lambda kv: int(kv[0])):
            rows.append({"name": f"{model}:{q}", "model": model, "quality": int(q),
                         "family": entry.get("family"), "description": entry.get("description", ""), **point})
    return rows
