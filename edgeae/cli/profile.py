"""CLI: `edgeae devices` (device profiles) and `edgeae profile` (latency, throughput, memory of a bundle)."""

from __future__ import annotations

from typing import overload

import click

from edgeae.cli import main


@main.command()
@click.argument("name_or_path", required=False)
def devices(name_or_path: str | None) -> None:
    """List the device profiles, or show (and validate) one by name or TOML path."""
    from edgeae.runtime.devices import list_profiles, load_profile

    if name_or_path is None:
        for p in list_profiles():
            click.echo(f"{p.name:<20} {p.cpu.architecture:<8} {p.cpu.cores:>2} cores  {p.int8.label:<36} "
                       f"{p.budget.latency_ms:>6g} ms  {p.budget.memory_mb:>5} MB  {p.description}")
        return
    p = load_profile(name_or_path)
    s = p.session
    click.echo("\n".join([
        f"name         {p.name}  ({p.path})",
        f"description  {p.description}",
        f"cpu          {p.cpu.architecture}, {p.cpu.model}, {p.cpu.cores} cores, {p.cpu.ram_mb} MB RAM",
        f"session      {s.intra_op_threads} intra-op / {s.inter_op_threads} inter-op threads, optimisation "
        f"{s.graph_optimization_level}, spinning {'on' if s.allow_spinning else 'off'}, {s.execution_mode}",
        f"int8         {p.int8.label}",
        f"budget       {p.budget.latency_ms:g} ms per image, {p.budget.memory_mb} MB",
    ]))


@overload
def _words(text: str, option: str) -> tuple[str, ...]: ...
@overload
def _words(text: None, option: str) -> None: ...
@overload
def _words(text: str | None, option: str) -> tuple[str, ...] | None: ...
def _words(text: str | None, option: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if not words:
        raise click.BadParameter(f"{text!r} names nothing", param_hint=option)
    return words


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--device", help="Device profile (name or TOML path): its threads and session settings, CPU "
              "affinity to its core count, and a verdict against its budgets.")
@click.option("--part", default="all", show_default=True,
              help="encoder, decoder (the graphs), encode, decode (the full codec paths) or all; comma-separated.")
@click.option("--precision", help="fp32,int8  [default: both when the bundle has int8 graphs]")
@click.option("--threads", help="Intra-op threads, e.g. 1,2  [default: the device's, else 1]")
@click.option("--batch", default="1", show_default=True, help="Batch sizes, e.g. 1,8,64.")
@click.option("--warmup", type=click.IntRange(0), default=5, show_default=True)
@click.option("--runs", type=click.IntRange(1), help="Timed calls per configuration.")
@click.option("--seconds", type=click.FloatRange(0, min_open=True),
              help="Time each configuration for this long instead  [default: 1 s]")
@click.option("--per-op", is_flag=True,
              help="Top operators of the graph parts by time (onnxruntime's profiler, in a separate session).")
@click.option("--baseline", help="torch,jpeg,webp: measured in the same run on the same images.")
@click.option("--images", type=click.Path(exists=True), help="A folder of images or a .npy array [default: synthetic].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every figure as JSON.")
@click.option("--histogram", type=click.Path(dir_okay=False), help="Write latency histograms (PNG, needs matplotlib).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True),
              help="Seconds one configuration (one worker process) may take before the profile fails  [default: 300]")
def profile(bundle: str, device: str | None, part: str, precision: str | None, threads: str | None, batch: str,
            warmup: int, runs: int | None, seconds: float | None, per_op: bool, baseline: str | None,
            images: str | None, json_path: str | None, histogram: str | None, timeout: float | None) -> None:
    """Latency (cold and steady), throughput, memory and size of a bundle, each configuration in a fresh process."""
    from edgeae.cli.train import _ints
    from edgeae.profiling.engine import PARTS, ProfileSettings, profile_bundle

    parts = _words(part, "--part")
    settings = ProfileSettings(
        parts=PARTS if parts == ("all",) else parts, precisions=_words(precision, "--precision"),
        threads=tuple(_ints(threads)) if threads else None, batches=tuple(_ints(batch) or ()), device=device,
        warmup=warmup, runs=runs, seconds=seconds, per_op=per_op, baselines=_words(baseline, "--baseline") or (),
        images=images, **({"timeout": timeout} if timeout else {}))
    report = profile_bundle(bundle, settings)
    _print(report)
    if json_path:
        report.write_json(json_path)
        click.echo(f"json: {json_path}")
    if histogram:
        try:
            report.write_histogram(histogram)
        except ImportError:
            raise click.ClickException("--histogram needs matplotlib (pip install 'edgeae[train]')") from None
        click.echo(f"histogram: {histogram}")


def _print(report) -> None:
    """A rich table where rich is installed (the [train] extra), plain aligned text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        click.echo(report.table())
        return
    headers, rows = report.rows()
    table = Table(*headers, box=None, header_style="bold", pad_edge=False)
    for column in table.columns[2:]:
        column.justify = "right"
    for row in rows:
        table.add_row(*row)
    click.echo("\n".join(report.header_lines()) + "\n")
    Console(width=max(160, len(headers) * 10)).print(table)
    click.echo("\n".join(report.footer_lines()))
