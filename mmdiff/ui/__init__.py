"""The local web page of ``mmdiff serve``: a gradio app with an image, a video and a text tab.

Gradio is an optional extra (``pip install 'mmdiff[ui]'``): ``import mmdiff`` never imports this
package, and the page's modules import gradio only when a page is built.

    from mmdiff.ui import launch
    launch(port=7860)                    # http://127.0.0.1:7860, until Ctrl-C
"""
from __future__ import annotations

import os

HOST = "127.0.0.1"  # the page is for this machine; reach it from another through an SSH tunnel


def launch(port: int = 7860, max_queue: int = 32, concurrency: int = 1, max_batch: int = 16,
           device: str | None = None, block: bool = True):
    """Serve the page on 127.0.0.1:``port``: ``concurrency`` requests sampled at a time, at most
    ``max_queue`` waiting, ``max_batch`` samples per request. ``block=False`` returns the running
    gradio app (tests); otherwise it serves until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio would report usage online
    from .app import THEME, build

    page = build(max_batch=max_batch, device=device)
    page.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    page.launch(server_name=HOST, server_port=port, theme=THEME, show_error=True, ssr_mode=False,
                mcp_server=False, prevent_thread_lock=not block, quiet=False)
    return page
