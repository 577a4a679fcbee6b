"""The warm HTTP server (``diffcls-fast serve``): one model, one engine loop, requests batched together.

Layout: :mod:`.app` (the Starlette ASGI app and ``serve()``), :mod:`.engine_loop`
(the thread that owns the model and admits requests into the running
scheduler), :mod:`.limits` (request parsing and limits), :mod:`.metrics`
(Prometheus text format). The client is :mod:`diffcls_fast.client`.
Needs the ``serve`` extra: ``pip install 'diffcls-fast[serve]'``.
"""

from __future__ import annotations

from ..errors import BackendUnavailable


def require_serve() -> None:
    """A one-line error naming the extra when the server's dependencies are missing."""
    missing = []
    for mod in ("starlette", "uvicorn", "python_multipart"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod.replace("_", "-"))
    if missing:
        raise BackendUnavailable(f"the server needs {', '.join(missing)}; pip install 'diffcls-fast[serve]'")
