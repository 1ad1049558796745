"""Shared fixtures: tiny real runs and bundles, trained once per test session on the embedded digits."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def _train(root: Path, family: str, seed: int = 0, epochs: int = 3, **options):
    from edgeae.train.trainer import TrainConfig, train

    name = f"{family}-s{seed}" + "".join(f"-{k}{v}" for k, v in sorted(options.items()))
    return train(family, "digits", root / name, options,
                 TrainConfig(epochs=epochs, batch_size=64, seed=seed, progress=False)).path


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def make_run(runs_root):
    """Factory: make_run("conv", seed=0, **model_options) -> run dir (cached per arguments)."""
    cache: dict = {}

    def factory(family: str = "conv", seed: int = 0, epochs: int = 3, **options) -> Path:
        key = (family, seed, epochs, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = _train(runs_root, family, seed, epochs, **options)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory, make_run):
    """Factory: make_bundle("conv", int8=True, seed=0) -> bundle dir (cached per arguments)."""
    from edgeae.bundling.build import ExportOptions, export_run

    root = tmp_path_factory.mktemp("bundles")
    cache: dict = {}

    def factory(family: str = "conv", int8: bool = False, seed: int = 0, **options) -> Path:
        key = (family, int8, seed, tuple(sorted(options.items())))
        if key not in cache:
            run = make_run(family, seed=seed, **options)
            out = root / f"{run.name}{'-int8' if int8 else ''}"
            export_run(run, ExportOptions(out=out, int8=int8, calibration_samples=64, measure_speed=False))
            cache[key] = out
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def tiny_bundle(make_bundle) -> Path:
    """The seed-003 conv AE on digits, exported with int8 graphs."""
    return make_bundle("conv", int8=True)


@pytest.fixture(scope="session")
def other_bundle(make_bundle) -> Path:
    """Same architecture, another seed: a different fingerprint (for mismatch tests)."""
    return make_bundle("conv", seed=1)


@pytest.fixture
def shared_mnist() -> Path:
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"shared MNIST not found at {SHARED_MNIST}")
    return SHARED_MNIST


def pytest_collection_modifyitems(items):
    """Tests that use the shared MNIST files carry the `mnist` marker (deselect them with -m "not mnist")."""
    for item in items:
        if "shared_mnist" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mnist)
