"""CLI: every command has --help; user errors are one line, non-zero exit, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgeae.cli import main


def _commands():
    return sorted(main.commands)


def test_the_core_commands_exist():
    expected = {"train", "models", "export", "inspect", "encode", "decode", "profile", "devices", "serve",
                "upload", "eval", "score", "demo"}
    assert expected <= set(_commands())


@pytest.mark.parametrize("name", _commands())
def test_help_of_every_command(name):
    res = CliRunner().invoke(main, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def test_bad_data_path_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["train", "--dataset", "mnist", "--data", str(tmp_path / "nope"),
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "does not exist" in lines[0]
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()


def test_train_export_inspect_through_the_cli(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--model", "dense", "--latent", "8", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.output and (tmp_path / "r" / "weights.safetensors").exists()
    res = runner.invoke(main, ["export", str(tmp_path / "r"), "--out", str(tmp_path / "b"), "--no-speed"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["inspect", str(tmp_path / "b")])
    assert res.exit_code == 0 and "fingerprint" in res.output
    res = runner.invoke(main, ["export", str(tmp_path / "r"), "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "already exists" in res.output
    res = runner.invoke(main, ["export", str(tmp_path / "r"), "--out", str(tmp_path / "c"), "--int8",
                               "--int8-keep-fp32", "encoder:middle"])
    assert res.exit_code == 2 and "encoder:last" in res.output and not (tmp_path / "c").exists()


def test_models_lists_every_family():
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0
    for fam in ("dense", "conv", "vae", "sparse"):
        assert fam in res.output


def test_a_broken_family_module_is_an_import_error_not_an_unknown_family(monkeypatch):
    import sys

    import edgeae.train.models
    from edgeae.train.models import registry

    registry.families()  # every family module imported once, as in real use ...
    monkeypatch.setitem(sys.modules, "edgeae.train.models.codec", None)  # ... then make that import fail
    monkeypatch.delattr(edgeae.train.models, "codec")
    with pytest.raises(ImportError, match="edgeae.train.models.codec"):
        registry.build_model("codec")
