"""``genforge serve``, ``genforge keys create|list|revoke``, ``genforge audit verify`` and ``genforge export``.

``genforge.cli.build_parser`` calls :func:`add_serve_commands`. Errors raised as
:class:`~genforge.errors.GenforgeError` become one-line messages with exit status 2 there; ``audit verify``
exits 1 when the log was tampered with.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path

from genforge.errors import GenforgeError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _doc(fn):
    return fn.__doc__.strip().splitlines()[0], fn.__doc__.strip()


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


def model_loader(path: str, backend: str, device: str = "cpu", threads: int | None = None):
    """A function that loads the model at ``path`` for ``backend`` (torch, or onnx: an export directory, or
    a model exported in memory at load time)."""
    from genforge.generation.model import load as load_model
    from genforge.export import is_onnx_dir, load_onnx, onnx_model_of

    if backend == "torch":
        if is_onnx_dir(path):
            raise GenforgeError(f"{path} is an ONNX export: serve it with --backend onnx")
        return lambda: load_model(path, device=device)

    def load_or_export():
        if is_onnx_dir(path):
            return load_onnx(path, threads)
        return onnx_model_of(load_model(path), threads)  # exported in memory: nothing written, encrypted or not

    return load_or_export


def cmd_serve(args) -> int:
    """Serve models over HTTP: genforge serve MODEL [NAME=MODEL ...] --host 127.0.0.1 --port 8000.

    Endpoints: POST /v1/generate, POST /v1/feedback, GET /v1/models, GET /healthz, GET /metrics, the web page
    at /, the OpenAPI schema at /openapi.json (no /docs page: it would load Swagger UI from a CDN). Requests
    need an API key ('Authorization: Bearer KEY', from genforge keys create) unless --insecure-no-auth, which
    only a loopback host may use.
    Every /v1 request is written to a signed, hash-chained audit log (key from $GENFORGE_AUDIT_KEY or
    $GENFORGE_AUDIT_KEY_FILE; genforge audit verify checks it).
    """
    import torch
    import uvicorn

    from genforge.serve.app import Served, ServeConfig, create_app
    from genforge.serve.audit import AuditLog, default_audit_log, load_key
    from genforge.serve.connections import uvicorn_config
    from genforge.serve.keys import KeyStore, default_keys_file

    if args.insecure_no_auth and not is_loopback(args.host):
        raise GenforgeError(f"--insecure-no-auth is refused on host {args.host}: without keys, anyone who can "
                            "reach the port could use the server. Bind to 127.0.0.1, or create keys "
                            "(genforge keys create --role generator)")
    for flag, value, low in (("--max-n", args.max_n, 1), ("--max-body-bytes", args.max_body_bytes, 1),
                             ("--body-timeout", args.body_timeout, 1e-3), ("--timeout", args.timeout, 1e-3),
                             ("--rate", args.rate, 0), ("--burst", args.burst, 1), ("--max-batch", args.max_batch, 1),
                             ("--max-wait-ms", args.max_wait_ms, 0), ("--max-queue", args.max_queue, 1),
                             ("--max-connections", args.max_connections, 1), ("--threads", args.threads or 1, 1)):
        if value < low:
            raise GenforgeError(f"{flag} must be at least {low:g}, got {value:g}")
    if args.threads:
        torch.set_num_threads(args.threads)
    keys = None
    if not args.insecure_no_auth:
        keys = KeyStore(args.keys_file or default_keys_file())
        if not keys.active():
            raise GenforgeError(f"no active API keys in {keys.path}: create one with genforge keys create --role "
                                "generator (or admin), or serve with --insecure-no-auth on 127.0.0.1")
    else:
        print("genforge: WARNING: --insecure-no-auth: no API keys are checked; anyone on this machine can use the "
              "server", file=sys.stderr)
    models = {}
    for name, path in parse_model_specs(args.models):
        load = model_loader(path, args.backend, args.device, args.threads)
        models[name] = Served(name, load(), load, args.backend)
        print(f"genforge: serving {name}: {models[name].model!r} from {path} ({args.backend})", file=sys.stderr)
    config = ServeConfig(max_n=args.max_n, max_body=args.max_body_bytes, body_timeout=args.body_timeout,
                         request_timeout=args.timeout, max_batch=1 if args.no_batching else args.max_batch,
                         max_wait=args.max_wait_ms / 1000, max_queue=args.max_queue, rate=args.rate,
                         burst=args.burst, auth=not args.insecure_no_auth, max_connections=args.max_connections)
    audit = AuditLog(args.audit_log or default_audit_log(), load_key(create=True), fsync=args.audit_fsync)
    app = create_app(models, config, keys, audit)
    print(f"genforge: audit log {audit.path}; page at http://{args.host}:{args.port}/", file=sys.stderr)
    try:
        uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port, log_level=args.log_level)).run()
    finally:
        audit.close()
    return 0


def cmd_keys_create(args) -> int:
    """Create an API key: genforge keys create --role generator [--name NAME]. The key is shown once."""
    from genforge.serve.keys import KeyStore, default_keys_file

    store = KeyStore(args.keys_file or default_keys_file())
    key, rec = store.create(args.role, args.name or "")
    print(key)
    print(f"genforge: created key {rec['id']} (role {rec['role']}) in {store.path}. This is the only time the key "
          "is shown: store it now.", file=sys.stderr)
    return 0


def cmd_keys_list(args) -> int:
    """List API keys: id, role, name, created, revoked (the keys themselves are not stored)."""
    from genforge.serve.keys import KeyStore, default_keys_file

    store = KeyStore(args.keys_file or default_keys_file())
    records = store.records()
    if not records:
        print(f"no keys in {store.path}")
    for r in records:
        revoked = f"revoked {r['revoked']}" if r.get("revoked") else "active"
        print(f"{r['id']}  {r['role']:<9}  {revoked:<28}  created {r.get('created')}  {r.get('name', '')}")
    return 0


def cmd_keys_revoke(args) -> int:
    """Revoke an API key by its id: genforge keys revoke ID. A running server refuses it from its next request."""
    from genforge.serve.keys import KeyStore, default_keys_file

    store = KeyStore(args.keys_file or default_keys_file())
    rec = store.revoke(args.id)
    print(f"genforge: revoked key {rec['id']} (role {rec['role']}) at {rec['revoked']}")
    return 0


def cmd_audit_verify(args) -> int:
    """Check an audit log's hash chain and HMACs: genforge audit verify LOG. Exit 1 naming each bad line.

    The HMAC key is read from $GENFORGE_AUDIT_KEY or $GENFORGE_AUDIT_KEY_FILE (else the default key file),
    as the server read it.
    """
    from genforge.serve.audit import load_key, verify

    problems, count, last = verify(args.log, load_key())
    for p in problems:
        print(f"{args.log}: {p}")
    if problems:
        print(f"genforge: audit log {args.log} FAILED: {len(problems)} problem(s) in {count} lines", file=sys.stderr)
        return 1
    print(f"genforge: audit log {args.log} verified: {count} lines, chain and HMACs intact; last line's SHA-256 "
          f"{last}")
    return 0


def cmd_export(args) -> int:
    """Export a model's generator (GAN) or decoder (VAE) to ONNX: genforge export MODEL --format onnx --out DIR.

    DIR gets model.onnx (inputs z [and y], output images in [0, 1], dynamic batch) and config.json; serve it
    with genforge serve DIR --backend onnx.
    """
    from genforge.generation.model import load as load_model
    from genforge.export import describe, export_onnx

    out = export_onnx(load_model(args.model), args.out, plaintext=args.plaintext)
    print(f"genforge: exported {describe(out)}")
    return 0


def add_serve_commands(sub) -> None:
    """Register serve, keys, audit and export on the genforge parser's subcommands."""
    keys_file_help = "key file (default $GENFORGE_KEYS_FILE or ~/.config/genforge/keys.json)"

    short, long = _doc(cmd_serve)
    p = sub.add_parser("serve", help=short, description=long)
    p.add_argument("models", nargs="+", metavar="MODEL", help="run or model directory (or NAME=DIR)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"), help="run models on PyTorch or "
                   "onnxruntime (ONNX export directories, or models exported at start)")
    p.add_argument("--device", default="cpu", help="torch backend: cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, help="threads of the forward pass (default: torch's)")
    p.add_argument("--keys-file", help=keys_file_help)
    p.add_argument("--insecure-no-auth", action="store_true", help="check no API keys (loopback hosts only)")
    p.add_argument("--audit-log", help="audit log (default ~/.local/share/genforge/audit.jsonl)")
    p.add_argument("--audit-fsync", action="store_true", help="fsync every audit line (survives power loss)")
    p.add_argument("--max-n", type=int, default=64, help="images per request (default 64; 413 above)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size (default 1 MiB; 413)")
    p.add_argument("--body-timeout", type=float, default=10.0, help="seconds to receive a body (default 10; 408)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request once queued (default 30; 503)")
    p.add_argument("--rate", type=float, default=20.0, help="requests/s per key (default 20; 0: none; 429)")
    p.add_argument("--burst", type=int, default=40, help="requests a key may send at once (default 40)")
    p.add_argument("--max-batch", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a request waits for company (default 2)")
    p.add_argument("--no-batching", action="store_true", help="one request per forward pass (same as --max-batch 1)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting per model (default 256; 503 above)")
    p.add_argument("--max-connections", type=int, default=1024, help="open connections (default 1024; 503 above)")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="API keys of genforge serve: create, list, revoke")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    short, long = _doc(cmd_keys_create)
    q = keys_sub.add_parser("create", help=short, description=long)
    q.add_argument("--role", required=True, choices=("viewer", "generator", "admin"),
                   help="viewer: list models; generator: also generate; admin: also manage keys, reload models")
    q.add_argument("--name", help="a note on whose key it is")
    q.add_argument("--keys-file", help=keys_file_help)
    q.set_defaults(func=cmd_keys_create)
    short, long = _doc(cmd_keys_list)
    q = keys_sub.add_parser("list", help=short, description=long)
    q.add_argument("--keys-file", help=keys_file_help)
    q.set_defaults(func=cmd_keys_list)
    short, long = _doc(cmd_keys_revoke)
    q = keys_sub.add_parser("revoke", help=short, description=long)
    q.add_argument("id", help="the key's id (genforge keys list)")
    q.add_argument("--keys-file", help=keys_file_help)
    q.set_defaults(func=cmd_keys_revoke)

    p = sub.add_parser("audit", help="the audit log of genforge serve: verify")
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    short, long = _doc(cmd_audit_verify)
    q = audit_sub.add_parser("verify", help=short, description=long)
    q.add_argument("log", help="audit log JSONL")
    q.set_defaults(func=cmd_audit_verify)

    short, long = _doc(cmd_export)
    p = sub.add_parser("export", help=short, description=long)
    p.add_argument("model", help="run directory or model directory")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (onnx)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--plaintext", action="store_true", help="export an encrypted model anyway (the ONNX file "
                   "holds its weights in the clear)")
    p.set_defaults(func=cmd_export)
