"""`rzero serve`: the local web demo (FastAPI + uvicorn), teacher and generator side by side."""

from __future__ import annotations

import ipaddress


def register(sub) -> None:
    p = sub.add_parser("serve", help="local web demo: type a prompt, see the generator and the teacher",
                       description="Serve a page (inline HTML/JS, no remote assets) and a JSON API "
                                   "(POST /api/generate) that sample the trained generator and its teacher from "
                                   "the same noise, with controls for seed, steps, CFG and eta and the latency "
                                   "of each. Without --checkpoint, the teacher alone.")
    p.add_argument("--checkpoint", default=None, help="run folder of `rzero train` (or its final/); "
                   "default: teacher only")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; the demo has no authentication)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--assets", default=None, help="world asset folder (default: the package's own)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; '*' turns the check off). "
                        "By default only the --host address, localhost and IP addresses are answered, so a web "
                        "page elsewhere cannot reach the demo through DNS rebinding")
    p.set_defaults(handler=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name part of a Host header value ("Name:8080" -> "name", "[::1]:80" -> "::1")."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def host_allowed(header: str | None, bound: str, extra: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether a request's Host header names this server. DNS rebinding needs a domain name
    that the attacker controls, so the accepted names are: the bound --host, localhost, any
    IP address literal, and the names given with --allow-host ('*': every name)."""
    if "*" in extra:
        return True
    if not header:
        return False
    name = _host_name(header)
    if name in {_host_name(bound), "localhost", *(_host_name(e) for e in extra)}:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def guard_host(app, bound: str, extra: list[str] | tuple[str, ...] = ()):
    """`app` (ASGI) behind the Host check: another Host gets a 400 with a one-line JSON error."""
    import json

    async def checked(scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            header = headers.get(b"host", b"").decode("latin-1")
            if not host_allowed(header, bound, extra):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = json.dumps({"error": f"Host '{header[:80]}' is not this server; open the demo at its own "
                                            "address, or restart with --allow-host NAME"}).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return checked


def run(args) -> int:
    from ..apps.serve import check_port_free

    from ..config.schema import MAX_THREADS

    if args.threads is not None and not 0 < args.threads <= MAX_THREADS:
        raise ValueError(f"--threads must be in 1..{MAX_THREADS}, got {args.threads}")
    check_port_free(args.host, args.port)  # before minutes of model loading on a big backbone
    import torch
    import uvicorn

    from ..apps.serve import DemoModels, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    models = DemoModels(args.checkpoint, args.assets)
    if not _is_loopback(args.host):
        print(f"serve: warning: listening on {args.host}, reachable from other machines; the demo has no "
              "authentication")
    what = (f"{models.meta.get('method', 'generator').upper()} generator from {args.checkpoint} + teacher"
            if models.generator is not None else "teacher only")
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serve: {what} on http://{url_host}:{args.port}/ (Ctrl+C to stop)", flush=True)
    uvicorn.run(guard_host(create_app(models), args.host, args.allow_host), host=args.host, port=args.port,
                log_level="warning")
    return 0
