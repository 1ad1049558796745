"""Entropy models: latents <-> the coded parts of one item, one module each, chosen by `entropy.model`.

    factorized  one integer table per latent channel (docs/FORMAT.md, coder 1); parts [y]
    hyperprior  z coded with per-channel tables; the bundle's integer `hyper_decoder` graph turns z into a table
                index (and mean) per y symbol; y coded conditionally on them; parts [z, y, escapes]

Every model has one interface (`EntropyModel`): `encode` takes the encoder graph's float latents of a batch
of one size and gives each item's parts; `decode` takes items' parts and a latent shape and gives the float
latents the decoder graph takes. Models reach the coder only through `streams.Tables` and run extra graphs
through the `Graphs` the codec hands them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from edgeae.runtime.manifest import Manifest

# graphs(role) -> run(feed) -> {output name: array}: the codec's sessions for the bundle's extra graphs.
Graphs = Callable[[str], Callable[[np.ndarray], dict[str, np.ndarray]]]

_MODULES = {"factorized": "factorized", "hyperprior": "hyperprior"}


class EntropyModel:
    """The interface of an entropy model (subclasses: `factorized.Factorized`, `hyperprior.Hyperprior`)."""

    name: ClassVar[str]
    model_id: ClassVar[int]  # the payload header's `model` byte (payload.MODELS)
    graph_roles: ClassVar[tuple[str, ...]] = ()  # extra graphs it runs: (encoder side, both sides)

    def __init__(self, manifest: Manifest, graphs: Graphs | None = None) -> None:
        self.manifest = manifest
        self.graphs = graphs

    qualities: int = 0  # operating points of a multi-quality bundle (1..qualities); 0: one quality

    def encode(self, y: np.ndarray, quality: int = 0) -> list[tuple[bytes, ...]]:
        """Float latents (n, *shape) of n items of one size -> each item's coded parts. `quality`: the
        operating point 1..`qualities` of a multi-quality bundle (0 for a bundle of one quality)."""
        raise NotImplementedError

    def decode(self, parts: Sequence[tuple[bytes, ...]], shape: tuple[int, ...], lanes: bool = True,
               quality: int = 0) -> np.ndarray:
        """Coded parts of n items with latent `shape` -> float32 latents (n, *shape); CorruptStream if invalid.
        `lanes` False: version-1 bodies (one stream each, no lane framing)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Table sizes etc. for `edgeae inspect`."""
        raise NotImplementedError


def model_for(manifest: Manifest, graphs: Graphs | None = None) -> EntropyModel:
    """The entropy model the manifest's `entropy.model` names."""
    name = manifest.entropy.model
    module = importlib.import_module(f"edgeae.runtime.entropy_models.{_MODULES[name]}")
    cls: type[EntropyModel] = module.MODEL
    return cls(manifest, graphs)
