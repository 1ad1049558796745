"""Training side: every family learns, checkpoints round-trip, seeds reproduce, datasets fail clearly."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from edgeae.errors import DataError
from edgeae.train.data import DataSpec, load_dataset, read_idx
from edgeae.train.models import build_model, families
from edgeae.train.models.registry import register
from edgeae.train.rundir import load_run
from edgeae.train.trainer import TrainConfig, _schedule, fit, train

SEED_FAMILIES = ["dense", "conv", "vae", "sparse"]


@pytest.fixture(scope="module")
def tiny():
    d = load_dataset("digits")
    d.train, d.val = d.train[:256], d.val[:64]
    return d


@pytest.mark.parametrize("family", SEED_FAMILIES)
def test_every_family_trains_and_its_loss_decreases(tiny, family):
    model = build_model(family, in_shape=tiny.shape)
    res = fit(model, tiny, TrainConfig(epochs=6, batch_size=32, lr=3e-3, progress=False))
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < losses[0]
    assert res["history"][-1]["val_loss"] < res["history"][0]["val_loss"]


def test_denoising_option_trains_on_noisy_inputs_with_clean_targets(tiny):
    model = build_model("dense", in_shape=tiny.shape, latent=16)
    res = fit(model, tiny, TrainConfig(epochs=4, batch_size=32, denoise_std=0.3, progress=False))
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]


def test_checkpoint_round_trip_gives_identical_outputs(make_run):
    run = make_run("conv")
    a, b = load_run(run).model, load_run(run).model
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(a(x).x_hat, b(x).x_hat)
    assert (run / "reconstructions.png").stat().st_size > 0
    assert not list(run.glob("*.pt")) and not list(run.glob("*.pkl"))


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=64, seed=3, progress=False, max_steps=5)
    w = [train("dense", "digits", tmp_path / f"r{i}", {"latent": 8}, cfg).model.state_dict() for i in range(2)]
    other = train("dense", "digits", tmp_path / "r3", {"latent": 8}, TrainConfig(**{**cfg.__dict__, "seed": 4})).model
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    assert not all(torch.equal(w[0][k], other.state_dict()[k]) for k in w[0])


def test_sparse_family_reports_near_zero_fraction(tiny):
    model = build_model("sparse", in_shape=tiny.shape, weight=0.1)
    res = fit(model, tiny, TrainConfig(epochs=3, batch_size=32, progress=False))
    assert 0.0 <= res["final"]["near_zero"] <= 1.0


def test_seed003_conv_shapes_on_mnist_size():
    model = build_model("conv", in_shape=(1, 28, 28))
    assert model.latent_shape == (8, 7, 7)
    assert model(torch.rand(2, 1, 28, 28)).x_hat.shape == (2, 1, 28, 28)
    kinds = [type(m).__name__ for m in model.decoder]
    assert "ConvTranspose2d" not in kinds and kinds.count("Upsample") == 2


def test_registry_rejects_duplicate_names():
    families()
    from edgeae.train.models.dense import DenseAE, DenseConfig

    with pytest.raises(ValueError, match="already registered"):
        register("dense", DenseConfig)(DenseAE)


def test_unknown_model_option_is_a_clear_error():
    with pytest.raises(ValueError, match="no option"):
        build_model("vae", in_shape=(1, 8, 8), lattent=3)


def test_splits_are_deterministic_by_seed():
    a, b, c = (load_dataset(DataSpec("digits", seed=s)) for s in (0, 0, 1))
    assert np.array_equal(a.val, b.val) and not np.array_equal(a.val, c.val)


def test_photos_hold_out_whole_photographs():
    d = load_dataset(DataSpec("photos", patch=64, color="rgb"))
    assert d.train.shape[1:] == (3, 64, 64) and d.channel_order == "RGB"
    assert len(d.val) == (400 // 64) * (600 // 64) + (300 // 64) * (451 // 64)  # coffee + chelsea
    # Training tiles overlap by half a patch; the first two of a row are 32 px apart.
    assert np.array_equal(d.train[0, :, :, 32:], d.train[1, :, :, :32])
    with pytest.raises(DataError, match="larger than every held-out"):
        load_dataset(DataSpec("photos", patch=512))


def test_cosine_lr_decay_ends_at_one_percent_of_every_group():
    model = build_model("codec", in_shape=(1, 8, 8), lmbda=0.01)
    opt = model.configure_optimizer(1e-3)  # two groups with different learning rates
    start = [g["lr"] for g in opt.param_groups]
    sched = _schedule(opt, TrainConfig(epochs=1, lr_decay="cosine"), planned_steps=10)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * lr for lr in start])
    assert _schedule(opt, TrainConfig(lr_decay="none"), 10) is None
    with pytest.raises(ValueError, match="lr_decay"):
        _schedule(opt, TrainConfig(lr_decay="step"), 10)


def test_mnist_from_shared_idx_uses_first_8000_for_training(shared_mnist):
    d = load_dataset(DataSpec("mnist", data=str(shared_mnist)))
    assert d.train.shape == (8000, 1, 28, 28) and d.val.shape == (2000, 1, 28, 28)
    raw = read_idx(shared_mnist / "t10k-images-idx3-ubyte.gz")
    assert np.array_equal(np.round(d.val[0, 0] * 255).astype(np.uint8), raw[8000])


def test_npy_and_images_datasets(tmp_path):
    from PIL import Image

    np.save(tmp_path / "a.npy", np.random.default_rng(0).integers(0, 256, (20, 12, 12)).astype(np.uint8))
    d = load_dataset(DataSpec("npy", data=str(tmp_path / "a.npy")))
    assert d.train.shape[1:] == (1, 12, 12) and d.train.max() <= 1.0
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((40, 40, 3), i * 40, np.uint8)).save(folder / f"{i}.png")
    d = load_dataset(DataSpec("images", data=str(folder), patch=16, color="rgb"))
    assert d.train.shape[1:] == (3, 16, 16)


@pytest.mark.parametrize("name", ["mnist", "npy", "images"])
def test_missing_data_path_is_a_data_error(tmp_path, name):
    with pytest.raises(DataError, match="does not exist|needs --data"):
        load_dataset(DataSpec(name, data=str(tmp_path / "nope")))


def test_malformed_idx_and_npy_are_data_errors(tmp_path):
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 100, 28, 28) + b"\x00" * 10)  # header says more
    with pytest.raises(DataError, match="IDX header says"):
        load_dataset(DataSpec("mnist", data=str(tmp_path)))
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="not a readable .npy"):
        load_dataset(DataSpec("npy", data=str(tmp_path / "x.npy")))
