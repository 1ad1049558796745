"""`edgeae export --model file.py:factory --weights w.safetensors`: a user's model, built and loaded safely.

The factory's file is imported (it runs: export only code you trust); weights are never unpickled:
safetensors, or a plain state_dict through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeae.errors import ModelLoadError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" ({Path(last.filename).name}:{last.lineno})"


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def load_factory(spec: str) -> Any:
    """`path/to/file.py:name` or `package.module:name` -> the object it names."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ModelLoadError(f"--model {spec!r} must be FILE.py:FACTORY or package.module:FACTORY")
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = Path(target)
        if not path.is_file():
            raise ModelLoadError(f"--model file {path} does not exist")
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        name = f"edgeae_user_model_{path.stem}_{digest}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ModelLoadError(f"--model file {path} cannot be imported as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.resolve().parent))  # so the file can import its neighbours
        try:
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's module code
            sys.modules.pop(name, None)
            raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {_first(exc)}{_where(exc)}; "
                                 "fix the file (it must import without side effects that need arguments)") from None
        finally:
            sys.path.remove(str(path.resolve().parent))
        where = str(path)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # ImportError, or whatever the package raises while importing
            raise ModelLoadError(f"cannot import {target!r}: {type(exc).__name__}: {_first(exc)}; is the package "
                                 "installed, or give the path of a .py file instead") from None
        where = target
    if not hasattr(module, attr):
        names = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))[:12]
        raise ModelLoadError(f"{where} has no {attr!r}; callables there: {', '.join(names) or 'none'}")
    return getattr(module, attr)


def build_model(spec: str, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """Call the factory (no arguments), check it gives an nn.Module, load `weights` strictly, eval mode."""
    factory = load_factory(spec)
    if isinstance(factory, nn.Module):
        model = factory
    elif callable(factory):
        try:
            model = factory()
        except Exception as exc:  # the user's factory
            raise ModelLoadError(f"the factory {spec} raised {type(exc).__name__}: {_first(exc)}{_where(exc)}; "
                                 "it is called with no arguments and must return the model") from None
    else:
        raise ModelLoadError(f"{spec} is a {type(factory).__name__}, not a factory function or nn.Module")
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"the factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, Path(weights))
    return model.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a plain state_dict .pt/.pth/.bin via torch.load(weights_only=True); never unpickles."""
    if not path.is_file():
        raise ModelLoadError(f"--weights {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ModelLoadError(f"--weights {path}: use .safetensors (preferred) or a state_dict saved as "
                             f"{'/'.join(WEIGHT_SUFFIXES[1:])}")
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"--weights {path} is not a readable safetensors file: {_first(exc)}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for non-torch files
        raise ModelLoadError(f"--weights {path} is not a plain state_dict (torch.load(weights_only=True) refuses "
                             f"it: {_first(exc)[:160]}); save model.state_dict(), or convert to safetensors") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint holding one
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"--weights {path} holds a {type(obj).__name__}, not a state_dict of tensors")
    return obj


def load_weights(model: nn.Module, path: Path) -> None:
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = set(model.state_dict()) - set(state)
        unexpected = set(state) - set(model.state_dict())
        detail = (f"missing {sorted(missing)[:4]}" if missing else "") + \
                 (f" unexpected {sorted(unexpected)[:4]}" if unexpected else "")
        raise ModelLoadError(f"--weights {path} do not match the model built by the factory: "
                             f"{detail.strip() or _first(exc)[:200]}") from None


def file_digest(path: Path) -> str:
    from edgeae.runtime.bundle import sha256_file

    return sha256_file(path)
