"""Serving a language model (section 6.6): a batching engine, an HTTP server, a chat page."""

from typing import Any

from dlbook.serve.engine import BatchingEngine, EngineBusy, GenerationRequest, TokenStream
from dlbook.serve.loadtest import LoadResult, load_test, sweep

_APP_NAMES = ("ServeLimits", "create_app", "serve_in_thread")


def __getattr__(name: str) -> Any:
    # The HTTP app needs fastapi and uvicorn (the `apps` extra): imported on first use, so the
    # engine works without them.
    if name in _APP_NAMES:
        from dlbook.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'dlbook.serve' has no attribute {name!r}")


__all__ = ["BatchingEngine", "EngineBusy", "GenerationRequest", "LoadResult", "TokenStream",
           *_APP_NAMES, "load_test", "sweep"]
