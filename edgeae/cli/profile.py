"""CLI: `edgeae devices` (device profiles) and `edgeae profile` (latency, throughput, memory of a bundle)."""

from __future__ import annotations

import click

from edgeae.cli import main


@main.command()
@click.argument("name_or_path", required=False)
def devices(name_or_path: str | None) -> None:
    """List the device profiles, or show (and validate) one by name or TOML path."""
    from edgeae.runtime.devices import list_profiles, load_profile

    if name_or_path is None:
        for p in list_profiles():
            click.echo(f"{p.name:<20} {p.cpu.architecture:<8} {p.cpu.cores:>2} cores  {p.int8.label:<32} "
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
