"""Device profiles: `devices/*.toml` -> validated `DeviceProfile` (threads, session settings, int8 preset, budgets)."""

from __future__ import annotations

import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeae.errors import DeviceProfileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_PACKAGE = Path(__file__).resolve().parents[1]
MAX_PROFILE_BYTES = 64 << 10


def _choice(*values: str) -> dict[str, Any]:
    return {"choices": values}


def _range(lo: float, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class CpuSpec:
    architecture: str = field(metadata=_choice("x86_64", "aarch64", "armv7l"))
    model: str
    cores: int = field(metadata=_range(1, 1024))
    ram_mb: int = field(metadata=_range(16))


@dataclass(frozen=True)
class SessionSettings:
    """onnxruntime SessionOptions for this device (edgeae.runtime.session.make_session applies them)."""

    intra_op_threads: int = field(metadata=_range(1, 1024))
    inter_op_threads: int = field(metadata=_range(1, 1024))
    graph_optimization_level: str = field(metadata=_choice("disable", "basic", "extended", "all"))
    allow_spinning: bool
    execution_mode: str = field(metadata=_choice("sequential", "parallel"))


@dataclass(frozen=True)
class Int8Settings:
    """The int8 (QDQ) quantisation types `edgeae export --int8` uses; a device profile's [int8] table (every
    key required there). Defaults (no device named): U8 activations / S8 weights, per-channel, 7-bit weights
    (reduce_range): right on every x86 CPU, with or without VNNI. Without it, a bundle verified on a VNNI host
    saturates onnxruntime's int16 pair sums on an AVX2 one (the demo's conv encoder: -0.01 dB on a Xeon,
    -0.58 dB on an AMD EPYC, 2026-12-04); a device profile for a VNNI or ARM CPU turns it off."""

    activation_type: str = field(default="uint8", metadata=_choice("uint8", "int8"))
    weight_type: str = field(default="int8", metadata=_choice("uint8", "int8"))
    per_channel: bool = True
    reduce_range: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_any(cls, obj: Any) -> Int8Settings:
        """None (the defaults), an Int8Settings, or a dict of its fields."""
        if obj is None:
            return cls()
        if isinstance(obj, cls):
            return obj
        d = obj if isinstance(obj, dict) else asdict(obj)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def label(self) -> str:
        """onnxruntime's shorthand: U8S8 = uint8 activations, int8 weights."""
        short = {"uint8": "U8", "int8": "S8"}
        extras = ["per-channel" if self.per_channel else "per-tensor"] + (["reduce_range"] if self.reduce_range else [])
        return f"{short[self.activation_type]}{short[self.weight_type]} QDQ, " + ", ".join(extras)


@dataclass(frozen=True)
class Budget:
    memory_mb: int = field(metadata=_range(1))
    latency_ms: float = field(metadata=_range(1e-3))  # per image


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    cpu: CpuSpec
    session: SessionSettings
    int8: Int8Settings
    budget: Budget
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


_SECTIONS: dict[str, type] = {"cpu": CpuSpec, "session": SessionSettings, "int8": Int8Settings, "budget": Budget}
_TYPES: dict[str, tuple[type[Any], ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}


def profile_dirs() -> list[Path]:
    """Where named profiles live: the wheel's `edgeae/_devices`, then a source checkout's `devices/`."""
    dirs = [_PACKAGE / "_devices"]
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file():  # not some other package's `devices` in site-packages
        dirs.append(checkout / "devices")
    return [d for d in dirs if d.is_dir()]


def _named() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def list_profiles() -> list[DeviceProfile]:
    """Every shipped profile, by name (an invalid one raises DeviceProfileError naming it)."""
    return [_load_file(p) for _, p in sorted(_named().items())]


def load_profile(name_or_path: str | os.PathLike[str] | DeviceProfile) -> DeviceProfile:
    """A shipped profile by name (`raspberry-pi-4`) or any TOML file by path; strictly validated."""
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    text = os.fspath(name_or_path)
    path = Path(text)
    if isinstance(name_or_path, os.PathLike) or text.endswith(".toml") or os.sep in text:
        if not path.is_file():
            raise DeviceProfileError(f"device profile {text} not found")
        return _load_file(path)
    named = _named()
    if text not in named:
        known = ", ".join(sorted(named)) or "none installed"
        raise DeviceProfileError(f"unknown device {text!r}; known: {known} (or give the path of a .toml file)")
    return _load_file(named[text])


def _load_file(path: Path) -> DeviceProfile:
    if path.stat().st_size > MAX_PROFILE_BYTES:
        raise DeviceProfileError(f"{path}: larger than {MAX_PROFILE_BYTES} bytes; not a device profile")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DeviceProfileError(f"{path}: not valid TOML ({str(exc).splitlines()[0]})") from None
    return _from_dict(data, path)


def _fail(path: Path, message: str) -> DeviceProfileError:
    return DeviceProfileError(f"{path}: {message}")


def _from_dict(data: dict[str, Any], path: Path) -> DeviceProfile:
    known = ["description", *_SECTIONS]
    for key in data:
        if key not in known:
            raise _fail(path, f"unknown key {key!r} (known: {', '.join(known)})")
    description = data.get("description", MISSING)
    if description is MISSING:
        raise _fail(path, "missing key 'description'")
    if not isinstance(description, str) or not description.strip():
        raise _fail(path, f"description must be a non-empty string, got {description!r}")
    sections = {name: _section(data, name, cls, path) for name, cls in _SECTIONS.items()}
    profile = DeviceProfile(name=path.stem, description=description, path=path, **sections)
    _cross_checks(profile, path)
    return profile


def _section(data: dict[str, Any], name: str, cls: type, path: Path) -> Any:
    table = data.get(name, MISSING)
    if table is MISSING:
        raise _fail(path, f"missing table [{name}]")
    if not isinstance(table, dict):
        raise _fail(path, f"{name} must be a table ([{name}]), got {type(table).__name__}")
    spec = {f.name: f for f in fields(cls)}
    for key in table:
        if key not in spec:
            raise _fail(path, f"unknown key '{name}.{key}' (known: {', '.join(spec)})")
    values = {}
    for key, f in spec.items():
        if key not in table:
            raise _fail(path, f"missing key '{name}.{key}'")
        values[key] = _check_value(f"{name}.{key}", table[key], f, path)
    return cls(**values)


def _check_value(label: str, value: Any, f: Any, path: Path) -> Any:
    kind = str(f.type)
    # bool is a subclass of int in Python; TOML's `true` must not pass as a thread count.
    if not isinstance(value, _TYPES[kind]) or (kind != "bool" and isinstance(value, bool)):
        raise _fail(path, f"{label} must be {_TYPE_WORDS[kind]}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise _fail(path, f"{label} must be one of {', '.join(choices)}; got {value!r}")
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise _fail(path, f"{label} must be {bounds}, got {value!r}")
    return float(value) if kind == "float" else value


def _cross_checks(p: DeviceProfile, path: Path) -> None:
    for key in ("intra_op_threads", "inter_op_threads"):
        if getattr(p.session, key) > p.cpu.cores:
            raise _fail(path, f"session.{key} = {getattr(p.session, key)} exceeds cpu.cores = {p.cpu.cores}")
    if p.session.execution_mode == "parallel" and p.session.inter_op_threads < 2:
        # onnxruntime silently runs sequentially with a single inter-op thread: say so instead.
        raise _fail(path, "session.execution_mode = 'parallel' needs session.inter_op_threads >= 2")
    if p.budget.memory_mb > p.cpu.ram_mb:
        raise _fail(path, f"budget.memory_mb = {p.budget.memory_mb} exceeds cpu.ram_mb = {p.cpu.ram_mb}")
