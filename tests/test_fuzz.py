"""Fuzz targets for the payload parser and the manifest loader (edgeae.serve.testing): a short hypothesis
campaign here; benchmarks/bench_fuzz.py runs 100,000 inputs of each. Only typed errors may come out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgeae.runtime.codec import Decoder, Encoder  # noqa: E402
from edgeae.serve.testing import fuzz_manifest, fuzz_payload, mutate, mutate_json  # noqa: E402

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.fixture(scope="module")
def seeds(tiny_bundle):
    enc = Encoder(tiny_bundle)
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    return Decoder(tiny_bundle), [enc.encode(images[:1]), enc.encode(images)]


@pytest.fixture(scope="module")
def manifest_bytes(tiny_bundle):
    return (tiny_bundle / "manifest.json").read_bytes()


@FAST
@given(data=st.binary(max_size=512))
def test_random_bytes_as_payload(seeds, data):
    decoder, _ = seeds
    assert fuzz_payload(data, decoder) != "ok" or data in seeds[1]


@FAST
@given(which=st.integers(0, 1), seed=st.integers(0, 2**32 - 1))
def test_mutated_payloads(seeds, which, seed):
    decoder, good = seeds
    fuzz_payload(mutate(good[which], np.random.default_rng(seed)), decoder)


@FAST
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_manifest_bytes_and_trees(manifest_bytes, seed):
    rng = np.random.default_rng(seed)
    fuzz_manifest(mutate(manifest_bytes, rng, rounds=4))
    tree = mutate_json(json.loads(manifest_bytes), rng)
    fuzz_manifest(json.dumps(tree).encode())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_manifests_through_bundle_open(tiny_bundle, tmp_path_factory, manifest_bytes, seed):
    folder = tmp_path_factory.mktemp("fz") / "b"
    shutil.copytree(tiny_bundle, folder)
    tree = mutate_json(json.loads(manifest_bytes), np.random.default_rng(seed))
    fuzz_manifest(json.dumps(tree).encode(), folder)


def test_the_seeds_themselves_are_accepted(seeds, manifest_bytes, tiny_bundle, tmp_path):
    decoder, good = seeds
    assert [fuzz_payload(p, decoder) for p in good] == ["ok", "ok"]
    folder = tmp_path / "b"
    shutil.copytree(tiny_bundle, folder)
    assert fuzz_manifest(manifest_bytes, folder) == "ok"
