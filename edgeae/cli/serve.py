"""CLI: `edgeae serve` (HTTP decode server), `edgeae upload` (drain a spool), `edgeae triton` (model repository)."""

from __future__ import annotations

import click

from edgeae.cli import main


def _need(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise click.ClickException(f"{module} is not installed; pip install 'edgeae[{extra}]'")


@main.command()
@click.option("--bundle", required=True, type=click.Path(), help="Bundle folder (the decoder side is enough).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Most requests decoded together in one graph run.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="How long the first request of a batch waits for company.")
@click.option("--store", type=click.Path(file_okay=False), help="Folder for /v1/ingest (off without it).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Decode threads (each gathers and runs its own batches; replicas with --engine ray).")
@click.option("--threads", type=click.IntRange(1, 1024), help="onnxruntime intra-op threads per session.")
@click.option("--max-body", default=1 << 20, show_default=True, type=click.IntRange(1, 64 << 20),
              help="Largest request body in bytes (413 above).")
@click.option("--queue", "queue_size", default=256, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Requests waiting or decoding before new ones get 503.")
@click.option("--int8", is_flag=True, help="Use the bundle's int8 decoder graph.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: FastAPI + uvicorn in this process; ray: Ray Serve replicas with @serve.batch.")
def serve(bundle: str, host: str, port: int, max_batch: int, max_wait_ms: float, store: str | None, workers: int,
          threads: int | None, max_body: int, queue_size: int, int8: bool, engine: str) -> None:
    """Serve POST /v1/decode, /v1/ingest, GET /v1/model, /healthz, /metrics for one bundle (docs/SERVER.md)."""
    precision = "int8" if int8 else "fp32"
    if engine == "ray":
        _need("ray", "ray")
        if store:
            raise click.UsageError("--store (ingest) is served by --engine local only")
        import signal
        import time

        from edgeae.serve import ray_app

        def _stop(*_: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)  # `kill` shuts Serve and Ray down like Ctrl-C

        ray_app.start(bundle, host=host, port=port, precision=precision, replicas=workers, max_batch=max_batch,
                      max_wait_ms=max_wait_ms, max_body=max_body, threads=threads or 1)
        click.echo(f"edgeae Ray Serve decoder on http://{host}:{port} ({workers} replica(s)); Ctrl-C or SIGTERM stops")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            ray_app.shutdown()
        return
    _need("fastapi", "server")
    _need("uvicorn", "server")
    from edgeae.serve.app import ServeConfig, run

    cfg = ServeConfig(bundle=bundle, precision=precision, max_batch=max_batch, max_wait_ms=max_wait_ms,
                      queue=queue_size, workers=workers, threads=threads, max_body=max_body, store=store)
    click.echo(f"edgeae decode server on http://{host}:{port} (docs at /docs)", err=True)
    run(cfg, host=host, port=port)


@main.command()
@click.option("--spool", required=True, type=click.Path(file_okay=False), help="Spool folder to drain.")
@click.option("--send", required=True, help="Server URL (http://host:port or its /v1/ingest URL).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 600), help="Per request, s.")
@click.option("--max-attempts", default=8, show_default=True, type=click.IntRange(1, 1000),
              help="Tries per payload before this run stops (what is left stays spooled).")
@click.option("--deadline", type=click.FloatRange(0.1, None), help="Stop after this many seconds.")
def upload(spool: str, send: str, timeout: float, max_attempts: int, deadline: float | None) -> None:
    """Send every spooled payload to the server's /v1/ingest; each leaves the spool once acknowledged."""
    from edgeae.serve.uploader import upload_spool

    r = upload_spool(spool, send, timeout=timeout, max_attempts=max_attempts, deadline=deadline,
                     log=lambda s: click.echo(s, err=True))
    click.echo(f"sent {r.sent} ({r.new} new on the server), rejected {len(r.rejected)}, still spooled {r.remaining}")
    if r.remaining:
        raise click.ClickException(f"{r.remaining} payload(s) still spooled ({r.last_error}); run `edgeae upload` again")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model repository folder.")
@click.option("--name", help="Model name [default: <bundle name>_decoder].")
@click.option("--int8", is_flag=True, help="Put the int8 decoder graph in the repository.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--max-queue-delay-us", default=5000, show_default=True, type=click.IntRange(0, 10_000_000))
def triton(bundle: str, out: str, name: str | None, int8: bool, max_batch: int, max_queue_delay_us: int) -> None:
    """Write a Triton model repository (onnxruntime backend) for BUNDLE's decoder graph."""
    from edgeae.serve.triton import write_repository

    model = write_repository(bundle, out, name=name, precision="int8" if int8 else "fp32", max_batch=max_batch,
                             delay_us=max_queue_delay_us)
    click.echo(f"wrote {model}/config.pbtxt and {model}/1/model.onnx (entropy decoding stays on the client; "
               f"see {model.parent}/README.md)")
