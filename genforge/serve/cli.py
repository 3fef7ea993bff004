"""``genforge serve``, ``genforge keys create|list|revoke``, ``genforge audit verify`` and ``genforge export``.

Registered in :data:`genforge.cli.COMMANDS`. Errors raised as :class:`~genforge.errors.GenforgeError` become
one-line messages with exit status 2 there; ``audit verify`` exits 1 when the log was tampered with.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path

import click

from genforge.cli.options import CONTEXT, Group, device_option, keys_file_option, model_argument, out_option
from genforge.errors import GenforgeError
from genforge.memory import tune_allocator

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_model_specs(specs: list[str]) -> list[tuple[str, str]]:
    """MODEL arguments as (name, path): ``NAME=PATH``, or a path named by its last folder."""
    out, seen = [], set()
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = Path(spec.rstrip("/")).name or "model"
        if not NAME.fullmatch(name):
            raise GenforgeError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (give NAME=PATH)")
        if name in seen:
            raise GenforgeError(f"two models named {name!r}: name them apart with NAME=PATH")
        seen.add(name)
        out.append((name, path))
    return out


def model_loader(path: str, backend: str, device: str = "auto", threads: int | None = None):
    """A function that loads the model at ``path`` for ``backend`` (torch, or onnx: an export directory, or
    a model exported to a temporary directory at load time)."""
    from genforge.generation.model import load as load_model
    from genforge.export import is_onnx_dir, load_onnx, onnx_model_of

    if backend == "torch":
        if is_onnx_dir(path):
            raise GenforgeError(f"{path} is an ONNX export: serve it with --backend onnx")
        return lambda: load_model(path, device=device)

    def load_or_export():
        if is_onnx_dir(path):
            return load_onnx(path, threads)
        return onnx_model_of(load_model(path, device="cpu"), threads)  # exported in memory: nothing written, encrypted or not

    return load_or_export


@click.command(context_settings=CONTEXT)
@click.argument("specs", nargs=-1, required=True, metavar="MODEL [NAME=MODEL ...]")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=8000, show_default=True, help="port")
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="run models on PyTorch or onnxruntime (ONNX export directories, or models exported at start)")
@device_option("torch backend: where the models run")
@click.option("--threads", type=int, help="threads of the forward pass (default: torch's)")
@keys_file_option
@click.option("--insecure-no-auth", is_flag=True, help="check no API keys (loopback hosts only)")
@click.option("--audit-log", metavar="FILE", help="audit log (default $XDG_DATA_HOME/genforge/audit.jsonl, ~/.local/share when unset)")
@click.option("--audit-fsync", is_flag=True, help="fsync every audit line (survives power loss)")
@click.option("--max-n", type=int, default=64, show_default=True, help="images per request (413 above)")
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True, help="request body size (413)")
@click.option("--body-timeout", type=float, default=10.0, show_default=True, help="seconds to receive a body (408)")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds per request once queued (503)")
@click.option("--rate", type=float, default=20.0, show_default=True, help="requests/s per key (0: none; 429)")
@click.option("--burst", type=int, default=40, show_default=True, help="requests a key may send at once")
@click.option("--max-batch", type=int, default=64, show_default=True, help="images per forward pass")
@click.option("--max-wait-ms", type=float, default=2.0, show_default=True, help="how long a request waits for company")
@click.option("--no-batching", is_flag=True, help="one request per forward pass (same as --max-batch 1); text: one "
              "sample decoding at a time (same as --max-rows 1)")
@click.option("--max-rows", type=int, default=16, show_default=True,
              help="text: samples decoding together (continuous batching)")
@click.option("--max-new-tokens", type=int, default=512, show_default=True,
              help="text: tokens one sample may ask for (422 above)")
@click.option("--token-rate", type=float, default=2000.0, show_default=True,
              help="text: generated tokens/s per key (0: none; a request reserves n x max_new_tokens; 429)")
@click.option("--token-burst", type=int, default=16384, show_default=True,
              help="text: tokens a key may reserve at once")
@click.option("--max-queue", type=int, default=256, show_default=True, help="requests waiting per model (503 above)")
@click.option("--max-connections", type=int, default=1024, show_default=True, help="open connections (503 above)")
@click.option("--max-connections-per-client", type=int, default=128, show_default=True,
              help="open connections from one address (503 above; clients behind one proxy share it)")
@click.option("--header-timeout", type=float, default=10.0, show_default=True,
              help="seconds to receive a request's headers (408, connection closed)")
@click.option("--audit-best-effort", is_flag=True,
              help="serve on when an audit line cannot be written (default: such requests get 503)")
@click.option("--audit-summary-interval", type=float, default=60.0, show_default=True,
              help="seconds between the summary lines of requests without a valid key")
@click.option("--anon-rate", type=float, default=2.0, show_default=True,
              help="requests/s per address without a valid key (429 above)")
@click.option("--anon-burst", type=int, default=20, show_default=True,
              help="requests without a valid key an address may send at once")
@click.option("--log-level", default="warning", show_default=True, help="uvicorn's log level")
def serve(specs: tuple[str, ...], host: str, port: int, backend: str, device: str, threads: int | None,
          keys_file: str | None, insecure_no_auth: bool, audit_log: str | None, audit_fsync: bool, max_n: int,
          max_body_bytes: int, body_timeout: float, timeout: float, rate: float, burst: int, max_batch: int,
          max_wait_ms: float, no_batching: bool, max_rows: int, max_new_tokens: int, token_rate: float,
          token_burst: int, max_queue: int, max_connections: int,
          max_connections_per_client: int, header_timeout: float, audit_best_effort: bool,
          audit_summary_interval: float, anon_rate: float, anon_burst: int, log_level: str) -> int:
    """Serve models over HTTP: genforge serve MODEL [NAME=MODEL ...] --host 127.0.0.1 --port 8000.

    Endpoints: POST /v1/generate, POST /v1/feedback, GET /v1/models, GET /healthz, GET /metrics, the web page
    at /, the OpenAPI schema at /openapi.json (no /docs page: it would load Swagger UI from a CDN). Requests
    need an API key ('Authorization: Bearer KEY', from genforge keys create) unless --insecure-no-auth, which
    only a loopback host may use. Every /v1 request with a valid key is written to a signed, hash-chained
    audit log before its response (key from $GENFORGE_AUDIT_KEY or $GENFORGE_AUDIT_KEY_FILE; genforge audit
    verify checks it); requests without one are rate-limited per address and counted in summary lines.
    """
    tune_allocator()  # before torch: a server started from Python (not through main()) gets it too
    import torch
    import uvicorn

    from genforge.serve.app import Served, ServeConfig, create_app
    from genforge.serve.audit import AuditLog, default_audit_log, load_key
    from genforge.serve.connections import uvicorn_config
    from genforge.serve.keys import KeyStore, default_keys_file

    if insecure_no_auth and not is_loopback(host):
        raise GenforgeError(f"--insecure-no-auth is refused on host {host}: without keys, anyone who can "
                            "reach the port could use the server. Bind to 127.0.0.1, or create keys "
                            "(genforge keys create --role generator)")
    for flag, value, low in (("--max-n", max_n, 1), ("--max-body-bytes", max_body_bytes, 1),
                             ("--body-timeout", body_timeout, 1e-3), ("--timeout", timeout, 1e-3),
                             ("--rate", rate, 0), ("--burst", burst, 1), ("--max-batch", max_batch, 1),
                             ("--max-wait-ms", max_wait_ms, 0), ("--max-queue", max_queue, 1),
                             ("--max-connections", max_connections, 1), ("--threads", threads or 1, 1),
                             ("--max-connections-per-client", max_connections_per_client, 1),
                             ("--header-timeout", header_timeout, 1e-3),
                             ("--audit-summary-interval", audit_summary_interval, 1e-3),
                             ("--anon-rate", anon_rate, 0), ("--anon-burst", anon_burst, 1),
                             ("--max-rows", max_rows, 1), ("--max-new-tokens", max_new_tokens, 1),
                             ("--token-rate", token_rate, 0), ("--token-burst", token_burst, 1)):
        if value < low:
            raise GenforgeError(f"{flag} must be at least {low:g}, got {value:g}")
    if threads:
        torch.set_num_threads(threads)
    store = None
    if not insecure_no_auth:
        store = KeyStore(keys_file or default_keys_file())
        if not store.active():
            raise GenforgeError(f"no active API keys in {store.path}: create one with genforge keys create --role "
                                "generator (or admin), or serve with --insecure-no-auth on 127.0.0.1")
    else:
        print("genforge: WARNING: --insecure-no-auth: no API keys are checked; anyone on this machine can use the "
              "server", file=sys.stderr)
    served = {}
    for name, path in parse_model_specs(list(specs)):
        load = model_loader(path, backend, device, threads)
        served[name] = Served(name, load(), load, backend)
        print(f"genforge: serving {name}: {served[name].model!r} from {path} ({backend})", file=sys.stderr)
    config = ServeConfig(max_n=max_n, max_body=max_body_bytes, body_timeout=body_timeout,
                         request_timeout=timeout, max_batch=1 if no_batching else max_batch,
                         max_wait=max_wait_ms / 1000, max_queue=max_queue, rate=rate,
                         burst=burst, auth=not insecure_no_auth, max_connections=max_connections,
                         max_connections_per_client=max_connections_per_client, header_timeout=header_timeout,
                         audit_best_effort=audit_best_effort, audit_summary_interval=audit_summary_interval,
                         anon_rate=anon_rate, anon_burst=anon_burst, max_rows=1 if no_batching else max_rows,
                         max_new_tokens=max_new_tokens, token_rate=token_rate, token_burst=token_burst)
    log = AuditLog(audit_log or default_audit_log(), load_key(create=True), fsync=audit_fsync)
    app = create_app(served, config, store, log)
    print(f"genforge: audit log {log.path}; page at http://{host}:{port}/", file=sys.stderr)
    try:
        uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level)).run()
    finally:
        log.close()
    return 0


@click.group(cls=Group, context_settings=CONTEXT)
def keys() -> None:
    """API keys of genforge serve: create, list, revoke."""


@keys.command("create", context_settings=CONTEXT)
@click.option("--role", required=True, type=click.Choice(["viewer", "generator", "admin"]),
              help="viewer: list models; generator: also generate; admin: also manage keys, reload models")
@click.option("--name", help="a note on whose key it is")
@keys_file_option
def keys_create(role: str, name: str | None, keys_file: str | None) -> int:
    """Create an API key: genforge keys create --role generator [--name NAME]. The key is shown once."""
    from genforge.serve.keys import KeyStore, default_keys_file

    store = KeyStore(keys_file or default_keys_file())
    key, rec = store.create(role, name or "")
    print(key)
    print(f"genforge: created key {rec['id']} (role {rec['role']}) in {store.path}. This is the only time the key "
          "is shown: store it now.", file=sys.stderr)
    return 0


@keys.command("list", context_settings=CONTEXT)
@keys_file_option
def keys_list(keys_file: str | None) -> int:
    """List API keys: id, role, name, created, revoked (the keys themselves are not stored)."""
    from genforge.serve.keys import KeyStore, default_keys_file

    store = KeyStore(keys_file or default_keys_file())
    records = store.records()
    if not records:
        print(f"no keys in {store.path}")
    for r in records:
        revoked = f"revoked {r['revoked']}" if r.get("revoked") else "active"
        print(f"{r['id']}  {r['role']:<9}  {revoked:<28}  created {r.get('created')}  {r.get('name', '')}")
    return 0


@keys.command("revoke", context_settings=CONTEXT)
@click.argument("key_id", metavar="ID")
@keys_file_option
def keys_revoke(key_id: str, keys_file: str | None) -> int:
    """Revoke an API key by its id (genforge keys list): a running server refuses it from its next request."""
    from genforge.serve.keys import KeyStore, default_keys_file

    store = KeyStore(keys_file or default_keys_file())
    rec = store.revoke(key_id)
    print(f"genforge: revoked key {rec['id']} (role {rec['role']}) at {rec['revoked']}")
    return 0


@click.group(cls=Group, context_settings=CONTEXT)
def audit() -> None:
    """The audit log of genforge serve: verify."""


@audit.command("verify", context_settings=CONTEXT)
@click.argument("log", metavar="LOG")
def audit_verify(log: str) -> int:
    """Check an audit log's hash chain and HMACs: genforge audit verify LOG. Exit 1 naming each bad line.

    The HMAC key is read from $GENFORGE_AUDIT_KEY or $GENFORGE_AUDIT_KEY_FILE (else the default key file),
    as the server read it.
    """
    from genforge.serve.audit import load_key, verify

    problems, count, last = verify(log, load_key())
    for p in problems:
        print(f"{log}: {p}")
    if problems:
        print(f"genforge: audit log {log} FAILED: {len(problems)} problem(s) in {count} lines", file=sys.stderr)
        return 1
    print(f"genforge: audit log {log} verified: {count} lines, chain and HMACs intact; last line's SHA-256 {last}")
    return 0


@click.command(context_settings=CONTEXT)
@model_argument
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="export format")
@out_option("output directory", metavar="DIR")
@click.option("--plaintext", is_flag=True,
              help="export an encrypted model anyway (model.onnx holds its weights in the clear)")
def export(model: str, fmt: str, out: str, plaintext: bool) -> int:
    """Export a model's generator (GAN) or decoder (VAE) to ONNX: genforge export MODEL --out DIR.

    DIR gets model.onnx (inputs z [and y], output images in [0, 1], dynamic batch) and config.json; serve it
    with genforge serve DIR --backend onnx. The export traces the network on the CPU (the graph is the same
    for every device), so it takes no --device.
    """
    from genforge.export import describe, export_onnx
    from genforge.generation.model import load as load_model

    path = export_onnx(load_model(model, device="cpu"), out, plaintext=plaintext)
    print(f"genforge: exported {describe(path)}")
    return 0
