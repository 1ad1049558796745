"""A narrower synthesis from a trained wider one: `narrow_synthesis`, `synthesis_widths`, and training g_s alone
(`synthesis_only`) from `--init`, which leaves g_a and the entropy model -- and so the coded bytes -- as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgeae.errors import RunDirError
from edgeae.train.models import build_model, make_config
from edgeae.train.models.codec import _Synthesis, narrow_synthesis


def _latents(n=6, m=8, h=4, w=4, seed=0):
    return torch.randn(n, m, h, w, generator=torch.Generator().manual_seed(seed)) * 2


def test_a_synthesis_of_its_own_widths_is_kept_exactly():
    torch.manual_seed(0)
    wide = _Synthesis(8, 16, 3, 3)
    same = _Synthesis(8, 16, 3, 3)
    state = narrow_synthesis(same.body, wide.body.state_dict(), _latents())
    for k, v in wide.body.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)


def test_dead_channels_are_the_ones_cut_and_the_output_is_unchanged():
    """A wide g_s whose every other channel (after each upsampling) is dead: cutting it to half width keeps the
    live channels and reproduces its output; a random choice of channels could not."""
    torch.manual_seed(0)
    wide = _Synthesis(8, 16, 3, 3).eval()
    with torch.no_grad():
        for idx in (0, 3):  # the convs before the two inner depth-to-space stages: out channel c = rows 4c..4c+3
            conv = wide.body[idx]
            rows = torch.arange(conv.out_channels).view(-1, 4)[1::2].reshape(-1)  # post-shuffle channels 1, 3, ...
            conv.weight[rows] = 0.0
            conv.bias[rows] = -1.0  # ReLU(-1) = 0: dead whatever the input
    narrow = _Synthesis(8, 16, 3, 3, widths=(8, 8)).eval()
    y = _latents(n=8)
    narrow.body.load_state_dict(narrow_synthesis(narrow.body, wide.body.state_dict(), y, ridge=1e-9))
    with torch.no_grad():
        ref, got = wide(y), narrow(y)
        assert narrow.body[3].in_channels == 8 and narrow.body[6].in_channels == 8
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
        # the fit generalises: other latents than the ones it saw
        y2 = _latents(n=4, seed=7)
        torch.testing.assert_close(narrow(y2), wide(y2), rtol=0, atol=1e-4)


def test_a_narrower_cut_is_refitted_not_just_sliced():
    """Halving a generic (random) g_s, whose channels all carry something, loses accuracy, but the refit loses
    far less than slicing the wide weights down to the narrow shapes (measured: 0.37 against 0.65 of the
    output's variance), and keeps most of the output."""
    torch.manual_seed(0)
    wide = _Synthesis(8, 16, 3, 3).eval()
    narrow = _Synthesis(8, 16, 3, 3, widths=(8, 8)).eval()
    y = _latents(n=16)
    narrow.body.load_state_dict(narrow_synthesis(narrow.body, wide.body.state_dict(), y))
    sliced = _Synthesis(8, 16, 3, 3, widths=(8, 8)).eval()
    own = sliced.body.state_dict()
    sliced.body.load_state_dict({k: v[tuple(slice(0, n) for n in own[k].shape)]
                                 for k, v in wide.body.state_dict().items()})
    with torch.no_grad():
        ref = wide.body(y)
        err = {name: float((net.body(y) - ref).pow(2).mean()) for name, net in
               (("refit", narrow), ("sliced", sliced))}
        energy = float((ref - ref.mean()).pow(2).mean())
    assert err["refit"] < 0.75 * err["sliced"]
    assert err["refit"] < 0.6 * energy


def test_an_igdn_synthesis_narrows_too():
    """IGDN mixes channels: its parameters follow the kept ones, and the cut net still beats slicing."""
    torch.manual_seed(0)
    wide = _Synthesis(8, 16, 3, 3, igdn=True).eval()
    narrow = _Synthesis(8, 16, 3, 3, igdn=True, widths=(8, 8)).eval()
    y = _latents(n=16)
    state = narrow_synthesis(narrow.body, wide.body.state_dict(), y)
    narrow.body.load_state_dict(state)
    assert state["2.gamma"].shape == (8, 8)
    with torch.no_grad():
        ref = wide.body(y)
        assert float((narrow.body(y) - ref).pow(2).mean()) < 0.6 * float((ref - ref.mean()).pow(2).mean())


def test_synthesis_widths_are_checked():
    with pytest.raises(ValueError, match="synthesis_widths must be 2 widths"):
        build_model("codec", make_config("codec", in_shape=(1, 16, 16), channels=16, latent_channels=8,
                                         downsamplings=3, synthesis_widths=(8,)))
    with pytest.raises(ValueError, match="choose one"):
        build_model("codec", make_config("codec", in_shape=(1, 16, 16), synthesis_only=True, freeze_transforms=True))


def test_transposed_syntheses_are_not_narrowed():
    wide = _Synthesis(8, 16, 3, 2, upsample="transposed")
    narrow = _Synthesis(8, 16, 3, 2, widths=(8,), upsample="transposed")
    with pytest.raises(ValueError, match="depth-to-space"):
        narrow_synthesis(narrow.body, wide.body.state_dict(), _latents())


@pytest.mark.slow
def test_synthesis_only_from_a_wider_run_keeps_the_coded_bytes(make_run, tmp_path):
    """`edgeae train --init WIDE --set synthesis_only=true --set synthesis_widths=[...]`: only g_s changes (and
    narrows); the exported bundle codes every image into the very same parts as the wide run's bundle (the
    payloads differ only in the 8 fingerprint bytes and the CRC), and decodes them near as well."""
    build = pytest.importorskip("edgeae.bundling.build")
    from edgeae.runtime.codec import Decoder, Encoder
    from edgeae.runtime.payload import parse
    from edgeae.train.data import load_dataset
    from edgeae.train.trainer import TrainConfig, train

    opts = {"lmbda": 0.05, "channels": 16, "latent_channels": 8, "downsamplings": 2}
    wide = make_run("codec", epochs=3, **opts)
    res = train("codec", "digits", tmp_path / "narrow", {**opts, "synthesis_only": True, "synthesis_widths": [8]},
                TrainConfig(epochs=2, batch_size=64, progress=False), init=wide)
    a, b = load_file(str(wide / "weights.safetensors")), load_file(str(res.path / "weights.safetensors"))
    for k, v in a.items():
        if not k.startswith("decoder."):
            torch.testing.assert_close(b[k], v, rtol=0, atol=0)  # g_a and the prior did not move
    assert b["decoder.body.3.weight"].shape == (4, 8, 3, 3)  # the last stage reads 8 channels, not 16
    assert res.metrics["final"]["psnr"] > res.metrics["history"][0]["val_psnr"] - 0.5
    bundles = []
    for name, run in (("wide", wide), ("narrow", res.path)):
        out = tmp_path / f"bundle-{name}"
        build.export_run(run, build.ExportOptions(out=out, int8=False, calibration_samples=64, measure_speed=False))
        bundles.append(out)
    x = load_dataset("digits").val[:16]
    pa, pb = (parse(Encoder(out).encode(x)) for out in bundles)
    assert pa.header.fingerprint != pb.header.fingerprint
    assert [it.parts for it in pa.items] == [it.parts for it in pb.items]
    rec = [Decoder(out).decode(Encoder(out).encode(x), as_float=True) for out in bundles]
    psnr = [float(np.mean(10 * np.log10(1 / ((r - x) ** 2).mean(axis=(1, 2, 3))))) for r in rec]
    assert psnr[1] > psnr[0] - 1.0


def test_an_init_that_cannot_be_narrowed_is_a_clear_error(make_run, tmp_path):
    from edgeae.train.trainer import TrainConfig, train

    wide = make_run("codec", epochs=1, lmbda=0.05, channels=16, latent_channels=8, downsamplings=2,
                    upsample="transposed")
    with pytest.raises(RunDirError, match="do not fit this model"):
        train("codec", "digits", tmp_path / "bad", {"lmbda": 0.05, "channels": 16, "latent_channels": 8,
                                                    "downsamplings": 2, "upsample": "transposed",
                                                    "synthesis_widths": [8], "synthesis_only": True},
              TrainConfig(epochs=1, batch_size=64, progress=False), init=wide)
