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
    p.set_defaults(handler=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    from ..serve import check_port_free

    if args.threads is not None and args.threads <= 0:
        raise ValueError(f"--threads must be positive, got {args.threads}")
    check_port_free(args.host, args.port)  # before minutes of model loading on a big backbone
    import torch
    import uvicorn

    from ..serve import DemoModels, create_app

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
    uvicorn.run(create_app(models), host=args.host, port=args.port, log_level="warning")
    return 0
