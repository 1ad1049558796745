"""CLI: `edgeae serve` (HTTP decode server), `edgeae upload` (drain a spool), `edgeae triton` (model repository)."""

from __future__ import annotations

import sys

import click

from edgeae.cli import main


def _need(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise click.ClickException(f"{module} is not installed; pip install 'edgeae[{extra}]'")


MIB = 1 << 20


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
              help="local: FastAPI + uvicorn in this process; ray: Ray Serve replicas, same HTTP layer.")
@click.option("--keys", type=click.Path(dir_okay=False), help="Device key file (TOML; re-read when it changes).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without --keys.")
@click.option("--require-signature", is_flag=True, help="Every payload must carry X-Edgeae-Signature (HMAC).")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM).")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--memory-budget", default=128, show_default=True, type=click.IntRange(8, 1 << 20),
              help="MiB of request bodies in flight plus decode work admitted, all requests together (503 above).")
@click.option("--budget-share", default=0.25, show_default=True, type=click.FloatRange(0.01, 1.0),
              help="The most of the memory budget one device (or client address, without --keys) may hold.")
@click.option("--max-items", type=click.IntRange(1, 1 << 16), help="Items per request [default: from the bundle].")
@click.option("--max-pixels", type=click.IntRange(1, 1 << 34),
              help="Output pixel values (items x C x H x W) per request [default: from the memory budget].")
@click.option("--request-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds from the body's first byte to the answer (503 after, the work is cancelled).")
@click.option("--body-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds to receive a whole body (408 after).")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds to receive a request head (408 after).")
@click.option("--max-connections", default=512, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Open connections; more get 503 and are closed.")
@click.option("--quota-bytes", type=click.IntRange(1, None), help="Per device: payload bytes per --quota-window.")
@click.option("--quota-items", type=click.IntRange(1, None), help="Per device: items per --quota-window.")
@click.option("--quota-window", default=3600.0, show_default=True, type=click.FloatRange(1, None),
              help="Seconds of the quota window.")
@click.option("--quota-disk", type=click.IntRange(1, None), help="Per device: bytes held in the store.")
@click.option("--keep-days", type=click.FloatRange(0.0001, None), help="Delete ingested payloads older than this.")
@click.option("--min-free", default=64, show_default=True, type=click.IntRange(0, None),
              help="MiB of disk the store keeps free (507 below).")
@click.option("--penalty-max", default=1.0, show_default=True, type=click.FloatRange(0, 60),
              help="Seconds: a device (or address) that keeps sending refused requests gets each further refusal "
                   "answered up to this much later (0: off; successes are never delayed).")
@click.option("--allow-unbound", is_flag=True,
              help="Serve a partial bundle of an older export whose fingerprint cannot be recomputed.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(bundle: str, host: str, port: int, max_batch: int, max_wait_ms: float, store: str | None, workers: int,
          threads: int | None, max_body: int, queue_size: int, int8: bool, engine: str, keys: str | None,
          insecure: bool, require_signature: bool, ssl_certfile: str | None, ssl_keyfile: str | None,
          memory_budget: int, budget_share: float, max_items: int | None, max_pixels: int | None, request_timeout: float,
          body_timeout: float, header_timeout: float, max_connections: int, quota_bytes: int | None,
          quota_items: int | None, quota_window: float, quota_disk: int | None, keep_days: float | None,
          min_free: int, penalty_max: float, allow_unbound: bool, log_level: str) -> None:
    """Serve POST /v1/decode, /v1/ingest, GET /v1/model, /healthz, /metrics for one bundle (docs/SERVER.md)."""
    from edgeae.serve.http import ServeConfig

    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise click.UsageError("TLS needs both --ssl-certfile and --ssl-keyfile")
    if require_signature and not keys:
        raise click.UsageError("--require-signature needs --keys (the HMAC key is the device key)")
    if (quota_bytes or quota_items or quota_disk or keep_days) and not store:
        raise click.UsageError("quotas and --keep-days apply to --store (ingest)")
    cfg = ServeConfig(bundle=bundle, precision="int8" if int8 else "fp32", max_batch=max_batch,
                      max_wait_ms=max_wait_ms, queue=queue_size, workers=workers, threads=threads,
                      max_body=max_body, store=store, keys=keys, require_signature=require_signature,
                      memory_budget=memory_budget * MIB, budget_share=budget_share, max_items=max_items, max_pixels=max_pixels,
                      request_timeout=request_timeout, body_timeout=body_timeout, header_timeout=header_timeout,
                      max_connections=max_connections, quota_bytes=quota_bytes, quota_items=quota_items,
                      quota_window_s=quota_window, quota_disk_bytes=quota_disk, keep_days=keep_days,
                      min_free_bytes=min_free * MIB, penalty_max_s=penalty_max, allow_unbound=allow_unbound)
    from edgeae.serve.app import check_exposure

    check_exposure(cfg, host, insecure)
    if engine == "ray":
        _need("ray", "ray")
        if store:
            raise click.UsageError("--store (ingest) is served by --engine local only")
        if ssl_certfile:
            raise click.UsageError("TLS with --engine ray: terminate it in a reverse proxy (docs/SERVER.md)")
        _serve_ray(cfg, host, port, workers)
        return
    _need("fastapi", "server")
    _need("uvicorn", "server")
    from edgeae.serve.app import run

    scheme = "https" if ssl_certfile else "http"
    click.echo(f"edgeae decode server on {scheme}://{host}:{port} (docs at /docs; "
               f"{'keys from ' + keys if keys else 'no authentication'})", err=True)
    run(cfg, host=host, port=port, log_level=log_level, insecure=insecure, ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile)


def _serve_ray(cfg, host: str, port: int, workers: int) -> None:
    """Run the Ray Serve deployment until Ctrl-C or SIGTERM; either stops Serve and Ray quietly."""
    import os
    import signal
    import threading

    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()

    def _take_signals() -> None:
        # ray.init installs C++ failure handlers for SIGTERM that print a stack trace and abort: take both
        # signals back right after it; they wake the main thread, which shuts down from ordinary Python code.
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    from edgeae.serve import ray_app

    _take_signals()
    ray_app.start(cfg, host=host, port=port, replicas=workers, after_init=_take_signals)
    click.echo(f"edgeae Ray Serve decoder on http://{host}:{port} ({workers} replica(s)); Ctrl-C or SIGTERM stops")
    while not stop.wait(3600):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal during shutdown changes nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ray_app.shutdown()
    except Exception as exc:  # Ray half gone already: say it in one line
        click.echo(f"Ray shutdown: {type(exc).__name__}: {exc}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # Ray's atexit hooks would print again after a shutdown that already ran


@main.group()
def keys() -> None:
    """Device keys for `edgeae serve --keys FILE` (docs/SERVER.md)."""


@keys.command("add")
@click.argument("key_file", type=click.Path(dir_okay=False))
@click.argument("device")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["ingest", "decode", "metrics"]),
              help="Repeat for several [default: ingest, decode].")
def keys_add(key_file: str, device: str, scopes: tuple[str, ...]) -> None:
    """Add DEVICE with a fresh key (or rotate its key) and print the key once; the server picks it up."""
    from edgeae.serve.auth import rewrite_key_file

    key = rewrite_key_file(key_file, device, scopes=list(scopes) or None)
    click.echo(key)


@keys.command("revoke")
@click.argument("key_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("device")
def keys_revoke(key_file: str, device: str) -> None:
    """Revoke DEVICE's key (a running server refuses it within a second)."""
    from edgeae.serve.auth import rewrite_key_file

    rewrite_key_file(key_file, device, revoke=True)
    click.echo(f"revoked {device}")


@main.group()
def store() -> None:
    """The ingest store's SQLite index: list, count, expire."""


def _open_store(path: str):
    from pathlib import Path

    from edgeae.errors import InputError
    from edgeae.serve.store import INDEX_NAME, ImageStore

    if not (Path(path) / INDEX_NAME).is_file():
        raise InputError(f"{path} has no {INDEX_NAME}; is it a --store folder of `edgeae serve`?")
    return ImageStore(path)


def _since(days: float | None) -> float | None:
    import time

    return None if days is None else time.time() - days * 86400


@store.command("list")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--device", help="Only this device.")
@click.option("--days", type=click.FloatRange(0, None), help="Only the last N days.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, None))
def store_list(path: str, device: str | None, days: float | None, limit: int) -> None:
    """One line per stored payload: time, device, id, bytes, items, bundle."""
    import datetime

    for e in _open_store(path).entries(device, _since(days), limit=limit):
        t = datetime.datetime.fromtimestamp(e.received, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(f"{t}  {e.device:<16} {e.id}  {e.bytes:>8} B  {e.items:>5} items  bundle {e.bundle[:16]}")


@store.command("count")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--device", help="Only this device.")
@click.option("--days", type=click.FloatRange(0, None), help="Only the last N days.")
def store_count(path: str, device: str | None, days: float | None) -> None:
    """Payloads, items, bytes received and bytes on disk."""
    n, items, received, disk = _open_store(path).count(device, _since(days))
    click.echo(f"{n} payloads, {items} items, {received} bytes received, {disk} bytes on disk")


@store.command("expire")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--keep-days", required=True, type=click.FloatRange(0, None), help="Keep what is newer than this.")
def store_expire(path: str, keep_days: float) -> None:
    """Delete payloads (folders and index rows) older than --keep-days."""
    n = _open_store(path).expire(_since(keep_days) or 0.0)
    click.echo(f"expired {n} payload(s)")


@main.command()
@click.option("--spool", required=True, type=click.Path(file_okay=False), help="Spool folder to drain.")
@click.option("--send", required=True, help="Server URL (http://host:port or its /v1/ingest URL).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 600), help="Per request, s.")
@click.option("--max-attempts", default=8, show_default=True, type=click.IntRange(1, 1000),
              help="Tries per payload before this run stops (what is left stays spooled).")
@click.option("--deadline", type=click.FloatRange(0.1, None), help="Stop after this many seconds.")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False),
              help="File whose first line is this device's key [default: $EDGEAE_KEY, else none].")
def upload(spool: str, send: str, timeout: float, max_attempts: int, deadline: float | None,
           key_file: str | None) -> None:
    """Send every spooled payload to the server's /v1/ingest; each leaves the spool once acknowledged."""
    from edgeae.serve.uploader import upload_spool

    r = upload_spool(spool, send, timeout=timeout, max_attempts=max_attempts, deadline=deadline,
                     log=lambda s: click.echo(s, err=True), key_file=key_file)
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
