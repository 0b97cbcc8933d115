"""``mmdiff serve``: the local web page (``mmdiff.ui``, gradio) on 127.0.0.1."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=7860, help="the port on 127.0.0.1 (default: 7860)")
    parser.add_argument("--max_queue", type=int, default=32,
                        help="requests waiting at most; one more is told the server is busy (default: 32)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests sampled at the same time (default: 1, which is fastest on a CPU)")
    parser.add_argument("--max_batch", type=int, default=16, help="samples per request at most (default: 16)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: the GPU if there is one)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    for name in ("max_queue", "concurrency", "max_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        import gradio  # noqa: F401  (an optional extra: imported only to serve)
    except ImportError as e:
        raise SystemExit(f"{args.prog}: error: the web page needs gradio ({e}); "
                         "install it with pip install 'mmdiff[ui]'") from e
    from ..ui import launch

    launch(port=args.port, max_queue=args.max_queue, concurrency=args.concurrency, max_batch=args.max_batch,
           device=args.device)
