"""CLI: `edgeae eval` (rate-distortion vs JPEG / WebP / PNG, BD-rates, a report) and `edgeae score`
(reconstruction-error anomaly scores). Torch-free; heavy imports happen inside the commands."""

from __future__ import annotations

import click

from edgeae.cli import main


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@main.command("eval")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", help="Dataset name (digits, mnist, photos, images, npy): its validation split, or "
              "all of it with --split all (needs the [train] extra).")
@click.option("--data", type=click.Path(), help="Dataset path, for datasets that need one.")
@click.option("--split", type=click.Choice(["val", "all"]), default="val", show_default=True,
              help="With --dataset: the validation split, or every image of the dataset.")
@click.option("--test-data", "test_data", multiple=True, type=click.Path(exists=True),
              help="Instead of --dataset: image files or folders (walked recursively), every image evaluated "
              "whole, at its own size where the bundle takes any size (repeatable).")
@click.option("--convert", is_flag=True, help="With --test-data: convert image files of the other kind (RGB <-> "
              "gray) instead of refusing them.")
@click.option("--seed", type=int, default=0, show_default=True, help="Split seed: use the one the bundle was "
              "trained with, so the validation images were never trained on.")
@click.option("--patch", type=int, default=32, show_default=True, help="Patch size (photos / images).")
@click.option("--color", type=click.Choice(["gray", "rgb"]), default="gray", show_default=True,
              help="Colour (photos / images).")
@click.option("--codecs", default="jpeg,webp,png", show_default=True, help="Classical codecs to compare with.")
@click.option("--qualities", default="1,5,10,20,30,40,50,60,70,80,90,95", show_default=True,
              help="JPEG / WebP qualities (comma-separated).")
@click.option("--label", "labels", multiple=True, help="Curve name: once for all bundles, or once per bundle "
              "[default: the manifest's model family].")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), multiple=True,
              help="Only these precisions [default: fp32, and int8 where the bundle has it].")
@click.option("--limit", type=click.IntRange(1), help="Evaluate only the first N images.")
@click.option("--method", type=click.Choice(["pchip", "cubic"]), default="pchip", show_default=True,
              help="BD-rate interpolation of log-rate vs PSNR.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Write report.md, rd.png, "
              "grid.png and rd.json here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("--threads", type=click.IntRange(1, 1024), help="onnxruntime threads.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def eval_cmd(bundles, dataset, data, split, test_data, convert, seed, patch, color, codecs, qualities, labels, precision,
             limit, method, report_dir, json_path, threads, no_progress) -> None:
    """Rate-distortion of BUNDLES (real payloads, one per image) vs classical codecs, with BD-rates."""
    from edgeae.evaluate.classical import parse_codecs
    from edgeae.evaluate.rd import eval_images, evaluate

    try:
        codec_names = parse_codecs(codecs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--codecs") from None
    if len(labels) not in (0, 1, len(bundles)):
        raise click.BadParameter(f"{len(labels)} labels for {len(bundles)} bundles; give one, or one per bundle",
                                 param_hint="--label")
    names = list(labels) * len(bundles) if len(labels) == 1 else (list(labels) or None)
    images, info = eval_images(bundles, dataset=dataset, data=data, split=split, test_data=test_data, seed=seed,
                               patch=patch, color=color, limit=limit, convert=convert)
    ev = evaluate(bundles, images, codec_names, _ints(qualities), names, precision or None,
                  progress=not no_progress, keep=6 if report_dir else 0, dataset=info, method=method,
                  threads=threads)
    _print_tables(ev)
    if json_path:
        ev.save(json_path)
        click.echo(f"wrote {json_path}")
    if report_dir:
        from edgeae.evaluate.report import write_report

        click.echo(f"wrote {write_report(ev, report_dir)}")


def _print_tables(ev) -> None:
    click.echo(f"{ev.n_images} images {ev.size_label()}, {ev.image_shape[2]} channel(s)")
    click.echo(f"{'curve':<22} {'setting':<24} {'bytes':>8} {'bpp':>8} {'PSNR':>7} {'SSIM':>7}")
    for p in ev.points:
        q = "exact" if p.lossless and p.exact == p.n else f"{p.mean_psnr:.2f}"
        click.echo(f"{p.curve:<22} {p.setting:<24} {p.mean_bytes:8.1f} {p.mean_bpp:8.3f} {q:>7} {p.mean_ssim:7.4f}")
    for c in ev.comparisons:
        click.echo(f"BD-rate {c.curve} vs {c.codec}: {c.bd_rate}")
    for e in ev.equal_quality:
        other = "outside its sweep" if e.codec_bytes is None else f"{e.codec_bytes:.1f} B (x{e.ratio:.3f})"
        click.echo(f"at {e.psnr:.2f} dB {e.curve} {e.setting}: {e.edgeae_bytes:.1f} B, {e.codec} {other}")


@main.command("score")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--threshold", type=float, help="Flag images whose score exceeds this.")
@click.option("--calibrate", "calibrate_dir", type=click.Path(exists=True),
              help="Normal images (folder, files or .npy) to set the threshold from.")
@click.option("--percentile", type=click.FloatRange(0, 100), default=99.0, show_default=True,
              help="With --calibrate: the threshold is this percentile of the normal scores.")
@click.option("--mode", type=click.Choice(["payload", "graphs"]), default="payload", show_default=True,
              help="payload: real encode -> bytes -> decode; graphs: fp32/int8 graphs, float latents.")
@click.option("--int8", is_flag=True, help="Use the bundle's int8 graphs.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write scores as JSON here.")
@click.option("--convert", is_flag=True, help="Convert image files of the other kind (RGB <-> gray) instead of "
              "refusing them.")
def score_cmd(bundle, inputs, threshold, calibrate_dir, percentile, mode, int8, json_path, convert) -> None:
    """Anomaly scores: per-image reconstruction MSE ([0, 1] pixels) of INPUT images through BUNDLE."""
    from edgeae.evaluate.anomaly import score_inputs
    from edgeae.evaluate.results import write_json

    if threshold is not None and calibrate_dir:
        raise click.UsageError("give --threshold or --calibrate, not both")
    rep = score_inputs(bundle, inputs, threshold=threshold, calibrate_with=[calibrate_dir] if calibrate_dir else (),
                       percentile=percentile, mode=mode, precision="int8" if int8 else "fp32", convert=convert)
    if rep.calibration_images is not None:
        click.echo(f"threshold {rep.threshold:.6g} = {percentile:g}th percentile of {rep.calibration_images} "
                   "normal images")
    for name, v, flag in zip(rep.names, rep.scores, rep.flags, strict=True):
        click.echo(f"{v:.6g}  {'ANOMALY ' if flag else ''}{name}")
    if rep.threshold is not None:
        click.echo(f"{sum(bool(f) for f in rep.flags)}/{len(rep.names)} above threshold {rep.threshold:.6g}")
    if json_path:
        write_json(json_path, rep.to_dict())
        click.echo(f"wrote {json_path}")
