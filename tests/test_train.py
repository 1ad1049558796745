"""Training side: every family learns, checkpoints round-trip, seeds reproduce, datasets fail clearly."""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgeae.errors import DataError, EdgeaeError, RunDirError
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


# --- issue 15: separate validation folder, random crops, resumable runs, devices, threads, the grid ---

def _image_folder(root, n, rng, sizes=((40, 50), (37, 61))):
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("imgs")
    return _image_folder(root / "train", 12, rng), _image_folder(root / "val", 3, rng, sizes=((70, 90),))


def _crop_spec(folders, **kw):
    return DataSpec("images", data=str(folders[0]), val_data=str(folders[1]), crop=16, crops_per_image=3,
                    color="rgb", **kw)


def test_crop_rows_name_exactly_the_crops_cut_from_them(folders):
    """The trainer draws an epoch as (image, top, left, flip) rows and cuts each batch from them (on the
    training device): the crops are the windows the rows name, scaled as the whole-epoch draw scales them."""
    d = load_dataset(_crop_spec(folders))
    assert d.crops is not None
    rows = d.crops.positions(np.random.default_rng(3))
    assert rows.shape == (len(d.crops), 4) and rows.dtype == np.int64
    s = d.crops.size
    got = d.crops.gather(rows[:7]).numpy()
    for (k, y, x, flip), crop in zip(rows[:7].tolist(), got, strict=True):
        tile = d.crops.images[k][y : y + s, x : x + s]
        tile = tile[:, ::-1] if flip else tile
        assert np.array_equal(crop, tile.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255))
    assert np.array_equal(d.crops.draw(np.random.default_rng(3))[:7], got)  # one way to cut a crop


def test_crops_are_redrawn_every_epoch_and_validation_is_the_other_folder(folders):
    d = load_dataset(_crop_spec(folders))
    assert d.crops is not None and len(d.crops) == 36 and d.train.shape == (len(d.crops.images), 3, 16, 16)  # one seeded crop an image
    assert d.val.shape == (3, 3, 16, 16)  # centre crops at the training crop size by default
    rng = np.random.default_rng(5)
    a, b = d.crops.draw(rng), d.crops.draw(rng)
    assert a.shape == b.shape and not np.array_equal(a, b)
    again = d.crops.draw(np.random.default_rng(5))
    assert np.array_equal(a, again)  # the draw is a function of the generator state only
    # Every crop is a real window (or its mirror) of its source image.
    src = d.crops.images[0].transpose(2, 0, 1)
    windows = np.lib.stride_tricks.sliding_window_view(src, (16, 16), axis=(1, 2))
    first = np.round(a[0] * 255).astype(np.uint8)
    hits = (windows == first[:, None, None]).all(axis=(0, 3, 4)) | (windows == first[:, None, None, :, ::-1]).all(
        axis=(0, 3, 4))
    assert hits.any()
    assert load_dataset(_crop_spec(folders, val_crop=32)).val.shape == (3, 3, 32, 32)


def test_val_data_without_crops_and_bad_crop_options(folders):
    d = load_dataset(DataSpec("images", data=str(folders[0]), val_data=str(folders[1]), patch=16, color="rgb"))
    assert d.val.shape[1:] == (3, 16, 16) and len(d.val) == 3 * (70 // 16) * (90 // 16)
    with pytest.raises(DataError, match="--dataset images"):
        load_dataset(DataSpec("digits", crop=8))
    with pytest.raises(DataError, match="crop size"):
        load_dataset(_crop_spec(folders).__class__(**{**_crop_spec(folders).to_dict(), "crop": 4}))
    with pytest.raises(DataError, match="needs a dataset read from a path"):
        load_dataset(DataSpec("digits", val_data=str(folders[1])))


def test_image_folders_are_bounded(folders, tmp_path, monkeypatch):
    import edgeae.train.data as data

    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 40 * 50 - 1)
    with pytest.raises(DataError, match="pixel limit per image"):
        load_dataset(_crop_spec(folders))
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 10**9)
    monkeypatch.setattr(data, "MAX_FOLDER_IMAGES", 5)
    with pytest.raises(DataError, match="more than the 5 limit"):
        load_dataset(_crop_spec(folders))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_dataset(DataSpec("images", data=str(tmp_path / "bad"), crop=8))


CODEC_TINY = {"lmbda": 0.02, "channels": 8, "latent_channels": 4}


@pytest.mark.parametrize("family,stop", [("codec", 7), ("codec", 12), ("conv", 5)])
def test_an_interrupted_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, folders, family, stop):
    """Stop mid-epoch (7), exactly at an epoch end (12: 36 crops / 3 per batch) and with a denoising AE on
    digits (5 steps per epoch); the resumed run's weights equal the uninterrupted run's exactly (CPU,
    same thread count)."""
    from edgeae.train.trainer import TrainingInterrupted, resume

    if family == "codec":
        spec, opts = _crop_spec(folders), CODEC_TINY
        cfg = TrainConfig(epochs=3, batch_size=3, lr_decay="cosine", progress=False, threads=1)
    else:
        spec, opts = DataSpec("digits"), {}
        cfg = TrainConfig(epochs=2, batch_size=256, denoise_std=0.2, progress=False, threads=1)
    whole = train(family, spec, tmp_path / "whole", opts, cfg)
    with pytest.raises(TrainingInterrupted, match=f"stopped at step {stop}.*--resume"):
        train(family, spec, tmp_path / "cut", opts, cfg, stop_at_step=stop)
    assert not (tmp_path / "cut" / "weights.safetensors").exists()
    resumed = resume(tmp_path / "cut")
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    def no_time(m):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in m["history"]]

    assert no_time(resumed.metrics) == no_time(whole.metrics)  # same losses, to the last bit
    devices = resumed.metrics["devices"]
    assert [d["device"] for d in devices] == ["cpu", "cpu"]
    assert devices[0]["first_step"] == 1 and devices[0]["last_step"] == stop
    assert devices[1]["first_step"] == stop + 1 and devices[1]["last_step"] == whole.metrics["steps"]
    ckpt = tmp_path / "cut" / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "state.json", "state.safetensors"]
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_resume_can_extend_a_finished_run(tmp_path):
    from edgeae.train.trainer import resume

    cfg = TrainConfig(epochs=1, batch_size=256, progress=False, threads=1)
    train("dense", "digits", tmp_path / "r", {"latent": 8}, cfg)
    longer = resume(tmp_path / "r", epochs=3)
    assert [h["epoch"] for h in longer.metrics["history"]] == [1, 2, 3]
    assert load_run(tmp_path / "r").config["train"]["epochs"] == 3


def test_resume_and_device_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from edgeae.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["train", "--resume", str(tmp_path / "none")])
    assert res.exit_code != 0 and "is not a run directory" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["train", "--model", "dense", "--epochs", "1", "--no-progress",
                               "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["train", "--resume", str(tmp_path / "r"), "--lr", "0.1"])
    assert res.exit_code != 0 and "drop --lr" in res.output
    res = runner.invoke(main, ["train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["history"][-1]["epoch"] == 2
    if not torch.cuda.is_available():
        res = runner.invoke(main, ["train", "--model", "dense", "--device", "cuda", "--out", str(tmp_path / "c")])
        assert res.exit_code != 0 and "--device cuda" in res.output and "--device cpu" in res.output
        assert len([x for x in res.output.splitlines() if x.strip()]) == 1 and not (tmp_path / "c").exists()
    res = runner.invoke(main, ["train", "--model", "dense", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "--resume" in res.output


def test_default_threads_follow_omp_then_free_cores(monkeypatch):
    from edgeae.train import trainer

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert trainer.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(trainer, "available_cpus", lambda: 8)
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert trainer.default_threads() == 4  # quiet: min(cores, 4)
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (6.2, 0.0, 0.0))
    assert trainer.default_threads() == 2
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (30.0, 0.0, 0.0))
    assert trainer.default_threads() == 1  # busy: never oversubscribe


def test_the_reconstruction_grid_is_titled_and_its_rows_labelled(tmp_path):
    from PIL import Image

    from edgeae.train.rundir import save_grid

    x = np.zeros((3, 1, 8, 8), np.float32)
    save_grid(tmp_path / "plain.png", x, x)
    save_grid(tmp_path / "titled.png", x, x, title="run: conv")
    plain, titled = (np.asarray(Image.open(tmp_path / f).convert("L")) for f in ("plain.png", "titled.png"))
    assert titled.shape[0] > plain.shape[0]  # a title band
    # The label column holds dark text pixels beside each row; the images themselves are black squares.
    label_w = plain.shape[1] - (3 * 10 + 2) * 8
    assert label_w > 40
    for top, bottom in ((0, plain.shape[0] // 2), (plain.shape[0] // 2, plain.shape[0])):
        assert (plain[top:bottom, :label_w] < 128).any()


def test_progress_lines_in_a_log(tmp_path, capsys, monkeypatch):
    from edgeae.train import trainer

    monkeypatch.setattr(trainer._Progress, "__init__", _fast_progress_init(trainer._Progress.__init__))
    train("dense", "digits", tmp_path / "r", {"latent": 8},
          TrainConfig(epochs=1, batch_size=64, progress=True, threads=1))
    err = capsys.readouterr().err
    assert "step " in err and "step/s" in err and "ETA" in err and "loss" in err


def _fast_progress_init(init):
    def fast(self, enabled, total, done, every=30.0):
        init(self, enabled, total, done, every=0.0)

    return fast


def test_variable_rate_bakes_into_plain_models_with_the_same_outputs():
    from edgeae.train.models.variable_rate import bake

    torch.manual_seed(0)
    m = build_model("codec-vr", in_shape=(3, 16, 16), channels=8, latent_channels=4, lmbdas=[0.005, 0.02, 0.08])
    opt = m.configure_optimizer(3e-3)
    # two groups, as variable-rate runs always had: everything else at lr, every quality's prior faster
    rest, priors = opt.param_groups
    assert [id(p) for p in priors["params"]] == [id(p) for p in m.priors.parameters()]
    assert priors["lr"] == pytest.approx(3e-3 * m.config.prior_lr_scale) and rest["lr"] == 3e-3
    assert len(rest["params"]) + len(priors["params"]) == len(list(m.parameters()))
    x = torch.rand(6, 3, 16, 16)
    for _ in range(30):
        loss = m.loss(m(x), x).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    rates = []
    for q in range(3):
        with m.at_quality(q):
            ref = m(x)
        plain = bake(m, q)
        assert type(plain).family == "codec" and plain.config.lmbda == m.lmbdas[q]
        out = plain(x)
        assert torch.equal(torch.round(ref.latent), torch.round(out.latent)) or (
            (torch.round(ref.latent) != torch.round(out.latent)).float().mean() < 1e-3)
        assert torch.allclose(ref.x_hat, out.x_hat, atol=1e-5)
        rates.append(float(torch.round(out.latent.detach()).abs().mean()))
        plain.entropy_tables()  # exportable as any codec
    assert rates[0] < rates[1] < rates[2]  # higher lmbda, larger gain, finer quantisation
    with pytest.raises(TypeError, match="bake"):
        m.entropy_tables()


def test_init_from_another_run_maps_a_base_run_into_a_variable_rate_model(tmp_path):
    from edgeae.errors import RunDirError

    cfg = TrainConfig(epochs=1, batch_size=256, progress=False, threads=1)
    base = train("codec", "digits", tmp_path / "base", CODEC_TINY, cfg)
    vr = train("codec-vr", "digits", tmp_path / "vr", {**CODEC_TINY, "lmbdas": [0.01, 0.04]},
               TrainConfig(epochs=1, batch_size=256, progress=False, threads=1, max_steps=1, lr=1e-12),
               init=tmp_path / "base")
    info = load_run(tmp_path / "vr").config["init"]
    assert info["family"] == "codec" and info["steps"] == base.metrics["steps"]
    b, v = base.model.state_dict(), vr.model.state_dict()
    assert torch.allclose(b["encoder.0.weight"], v["encoder.inner.0.weight"], atol=1e-6)  # one step at lr 1e-12: unchanged
    assert torch.allclose(v["priors.0.biases.0"], v["priors.1.biases.0"], atol=1e-6)
    with pytest.raises(RunDirError, match="do not fit this model"):
        train("dense", "digits", tmp_path / "bad", {}, cfg, init=tmp_path / "base")
    assert not (tmp_path / "bad").exists()


def test_a_slim_checkpoint_resumes_elsewhere_without_adam_moments(tmp_path, folders):
    import shutil

    from edgeae.train.trainer import TrainingInterrupted, resume, slim_checkpoint

    spec = _crop_spec(folders)
    cfg = TrainConfig(epochs=2, batch_size=6, progress=False, threads=1)
    with pytest.raises(TrainingInterrupted):
        train("codec", spec, tmp_path / "run", CODEC_TINY, cfg, stop_at_step=4)
    slim = slim_checkpoint(tmp_path / "run", tmp_path / "slim")
    full_size = sum(p.stat().st_size for p in (tmp_path / "run" / "checkpoint").iterdir())
    slim_size = sum(p.stat().st_size for p in (slim / "checkpoint").iterdir())
    assert slim_size < full_size * 0.6
    with pytest.raises(RunDirError, match=r"has a checkpoint \(step 4\) but no final weights.*--max-steps 4"):
        load_run(slim)  # what `edgeae export` says of an unfinished run
    # "Another machine": the data moved; --data/--val-data say where it is now.
    moved = tmp_path / "moved"
    shutil.copytree(folders[0], moved / "train")
    shutil.copytree(folders[1], moved / "val")
    done = resume(slim, data=str(moved / "train"), val_data=str(moved / "val"))
    assert done.metrics["steps"] == 12 and [d["first_step"] for d in done.metrics["devices"]] == [1, 5]
    assert load_run(slim).config["data"]["data"] == str((moved / "train").resolve())


def test_a_crop_run_validated_at_another_side_exports_at_the_smaller_side(folders, tmp_path):
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.runtime import Decoder, Encoder
    from edgeae.train.trainer import TrainConfig, train

    run = train("codec", _crop_spec(folders, val_crop=32), tmp_path / "run",
                {"channels": 4, "latent_channels": 4, "downsamplings": 2},
                TrainConfig(epochs=1, batch_size=12, progress=False)).path
    out = tmp_path / "bundle"
    export_run(run, ExportOptions(out=out, calibration_samples=8, measure_speed=False))
    enc = Encoder(out)
    assert enc.manifest.input.shape == (3, 16, 16) and enc.any_size  # 16-px crops, validated at 32: both cut to 16
    img = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    assert Decoder(out).decode(enc.encode(img))[0].shape == (20, 28, 3)


def test_init_records_every_step_behind_the_weights_through_chained_warm_starts(tmp_path):
    """A run --init from a run that was itself --init from another: its record counts all three runs'
    steps (the zoo's model card says so), and keeps counting once the older runs are gone."""
    import shutil

    from edgeae.train.rundir import lineage_steps

    cfg = TrainConfig(epochs=1, batch_size=64, progress=False, threads=1, max_steps=3)
    train("codec", "digits", tmp_path / "a", CODEC_TINY, cfg)
    train("codec", "digits", tmp_path / "b", CODEC_TINY, replace(cfg, max_steps=5), init=tmp_path / "a")
    lost = {**load_run(tmp_path / "b").config["init"]}
    lost.pop("total_steps")  # a record written before total_steps existed: the walk follows the run directories
    assert lineage_steps(lost) == 3
    train("codec", "digits", tmp_path / "c", CODEC_TINY, replace(cfg, max_steps=2), init=tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    info = load_run(tmp_path / "c").config["init"]
    assert (info["steps"], info["total_steps"]) == (5, 8) and lineage_steps(info) == 8
    assert lineage_steps(None) == 0


def test_frozen_transforms_from_a_codec_run_give_both_families_the_same_reconstruction(tmp_path):
    """Issue 14's fair comparison: a hyperprior (and a factorized codec) started from one codec run with
    freeze_transforms train their entropy model only, so both decode the very same y_hat."""
    from edgeae.errors import RunDirError

    tiny = {**CODEC_TINY, "downsamplings": 1}
    base = train("codec", "digits", tmp_path / "base", tiny,
                 TrainConfig(epochs=1, batch_size=256, progress=False, threads=1))
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False, threads=1, max_steps=4, lr=1e-2)
    frozen = {**tiny, "freeze_transforms": True}
    hyper = train("hyperprior", "digits", tmp_path / "hyper", {**frozen, "hyper_channels": 4,
                  "hyper_latent_channels": 2, "means": True, "hyper_signed": True}, cfg, init=tmp_path / "base")
    codec = train("codec", "digits", tmp_path / "codec", frozen, cfg, init=tmp_path / "base")
    b, h, c = base.model.state_dict(), hyper.model.state_dict(), codec.model.state_dict()
    for key in (k for k in b if k.startswith(("encoder.", "decoder."))):
        assert torch.equal(b[key], h[key]) and torch.equal(b[key], c[key]), key
    assert not torch.equal(b["prior.biases.0"], c["prior.biases.0"])  # the entropy model did train
    assert load_run(tmp_path / "hyper").config["init"]["family"] == "codec"
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(base.model.eval()(x).x_hat, hyper.model.eval()(x).x_hat)
    train("dense", "digits", tmp_path / "dense", {}, TrainConfig(epochs=1, progress=False, threads=1))
    with pytest.raises(RunDirError, match="do not fit"):  # a run of another family does not fit
        train("hyperprior", "digits", tmp_path / "bad", {**frozen, "hyper_channels": 4}, cfg,
              init=tmp_path / "dense")


def test_frozen_transforms_from_a_hyperprior_run_take_a_new_entropy_model_of_any_size(tmp_path):
    """freeze_transforms on a hyperprior run's --init: its g_a and g_s, frozen; h_a, h_s and z's prior of
    another size start fresh (a bigger entropy model on transforms already trained)."""
    from edgeae.errors import RunDirError

    tiny = {**CODEC_TINY, "downsamplings": 1, "hyper_channels": 4, "hyper_latent_channels": 2}
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False, threads=1, max_steps=4, lr=1e-2)
    base = train("hyperprior", "digits", tmp_path / "base", tiny, cfg)
    bigger = {**tiny, "hyper_channels": 8, "hyper_latent_channels": 6, "freeze_transforms": True}
    new = train("hyperprior", "digits", tmp_path / "new", bigger, cfg, init=tmp_path / "base")
    b, n = base.model.state_dict(), new.model.state_dict()
    assert all(torch.equal(b[k], n[k]) for k in b if k.startswith(("encoder.", "decoder.")))
    assert n["h_s.last.weight"].shape != b["h_s.last.weight"].shape
    smaller = {**tiny, "hyper_channels": 2}
    with pytest.raises(RunDirError, match="do not fit"):  # without freeze_transforms, never a narrower one
        train("hyperprior", "digits", tmp_path / "bad", smaller, cfg, init=tmp_path / "base")


def test_a_wider_entropy_model_starts_from_a_smaller_one_computing_the_same(tmp_path):
    """--init from a hyperprior run into wider h_a / h_s (and more z channels), transforms trained jointly:
    the widened model computes what the run's did (the new units start silent), then trains them."""
    from edgeae.train.trainer import init_weights

    tiny = {**CODEC_TINY, "downsamplings": 1, "hyper_channels": 4, "hyper_latent_channels": 2}
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False, threads=1, max_steps=6, lr=1e-2)
    base = train("hyperprior", "digits", tmp_path / "base", tiny, cfg).model.eval()
    x = torch.rand(5, 1, 8, 8)
    for wider in ({"hyper_channels": 8}, {"hyper_channels": 8, "hyper_latent_channels": 5}):
        model = build_model("hyperprior", in_shape=(1, 8, 8), **{**tiny, **wider})
        init_weights(model, tmp_path / "base")
        model.eval()
        with torch.no_grad():
            a, b = base(x), model(x)
        assert torch.allclose(a.x_hat, b.x_hat, rtol=0, atol=1e-6)  # 1 ulp apart on some CPUs (memory format)
        assert torch.allclose(a.extras["likelihoods"], b.extras["likelihoods"], rtol=0, atol=1e-6)  # y's rate
        assert torch.allclose(a.extras["z"], b.extras["z"][:, :2], rtol=0, atol=1e-6)  # the old z channels
        assert torch.allclose(a.extras["z_likelihoods"], b.extras["z_likelihoods"][:, :2], rtol=0, atol=1e-6)
    new = train("hyperprior", "digits", tmp_path / "new", {**tiny, "hyper_channels": 8}, cfg,
                init=tmp_path / "base").model.state_dict()
    assert new["h_s.last.weight"][:, 4:].abs().sum() > 0  # the new hidden units did learn


def test_hyper_lr_scale_gives_the_hyper_networks_their_own_learning_rate():
    model = build_model("hyperprior", in_shape=(1, 8, 8), **{**CODEC_TINY, "downsamplings": 1,
                                                             "hyper_channels": 4, "hyper_latent_channels": 2})
    assert len(model.configure_optimizer(1e-3).param_groups) == 2  # the default: as runs before it had
    model.config.hyper_lr_scale = 5.0
    groups = model.configure_optimizer(1e-3).param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-3 * model.config.prior_lr_scale, 5e-3])
    hyper = {id(p) for p in (*model.hyper_encoder.parameters(), *model.h_s.parameters())}
    assert {id(p) for p in groups[2]["params"]} == hyper
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    model.config.hyper_lr_scale = 0.0
    with pytest.raises(ValueError, match="hyper_lr_scale"):
        model.configure_optimizer(1e-3)


def test_val_every_validates_every_nth_epoch_and_at_the_end(tiny):
    model = build_model("dense", in_shape=tiny.shape, latent=8)
    res = fit(model, tiny, TrainConfig(epochs=5, batch_size=64, progress=False, threads=1, val_every=2))
    assert [("val_loss" in h) for h in res["history"]] == [False, True, False, True, True]  # epoch 5: the last
    assert res["final"]["loss"] == res["history"][-1]["val_loss"]  # the last epoch's validation, not a second one
    assert all(h["train_loss"] > 0 for h in res["history"])
    with pytest.raises(EdgeaeError, match="--val-every"):
        fit(model, tiny, TrainConfig(epochs=1, batch_size=64, progress=False, threads=1, val_every=0))


# --- bf16 training (--precision bf16) ---

@pytest.mark.parametrize("family", ["codec", "hyperprior"])
def test_bf16_training_runs_the_transforms_in_bfloat16_and_the_rates_in_float32(tmp_path, folders, family):
    """Under --precision bf16 the analysis convolutions output bfloat16 while every likelihood (the rate) is
    float32; the run records its precision per segment and a resume may switch back to fp32."""
    from edgeae.train.trainer import TrainingInterrupted, resume

    seen: dict[str, torch.dtype] = {}
    opts = {**CODEC_TINY, **({"hyper_channels": 8, "hyper_latent_channels": 4, "downsamplings": 2}
                             if family == "hyperprior" else {})}
    cfg = TrainConfig(epochs=2, batch_size=3, progress=False, threads=1, precision="bf16")
    spec = _crop_spec(folders) if family == "codec" else DataSpec(
        "images", data=str(folders[0]), val_data=str(folders[1]), crop=32, crops_per_image=3, color="rgb")
    with pytest.raises(TrainingInterrupted):
        train(family, spec, tmp_path / "r", opts, cfg, stop_at_step=4)
    model = build_model(family, in_shape=(3, 32, 32), **opts)
    model.encoder[0].register_forward_hook(lambda m, i, o: seen.__setitem__("g_a", o.dtype))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 32, 32))
    assert seen["g_a"] == torch.bfloat16
    assert all(out.extras[k].dtype == torch.float32 for k in out.extras if "likelihoods" in k)
    done = resume(tmp_path / "r", precision="fp32")
    assert [d["precision"] for d in done.metrics["devices"]] == ["bf16", "fp32"]
    assert np.isfinite(done.metrics["final"]["loss"])
    assert load_run(tmp_path / "r").config["train"]["precision"] == "bf16"  # the run's own option is kept


@pytest.mark.parametrize("family", SEED_FAMILIES)
def test_bf16_training_of_every_seed_family_gives_a_finite_falling_loss(tiny, family):
    model = build_model(family, in_shape=tiny.shape)
    res = fit(model, tiny, TrainConfig(epochs=3, batch_size=32, lr=3e-3, progress=False, precision="bf16"))
    losses = [h["train_loss"] for h in res["history"]]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_an_unknown_precision_is_a_one_line_error(tmp_path):
    from click.testing import CliRunner

    from edgeae.cli import main
    from edgeae.errors import EdgeaeError

    with pytest.raises(EdgeaeError, match="--precision must be one of fp32, bf16"):
        fit(build_model("dense", in_shape=(1, 8, 8)), load_dataset("digits"), TrainConfig(precision="fp16"))
    res = CliRunner().invoke(main, ["train", "--model", "dense", "--precision", "fp16", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "fp16" in res.output and "Traceback" not in res.output
