"""The worker process's Runtime: opened once on the AsyncIO event loop, closed at shutdown."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from envrestore.config.settings import Settings
from envrestore.pipelines.catalog import job_kinds
from envrestore.pipelines.jobs.runtime import Runtime, open_runtime

_runtime: Runtime | None = None
_stack: AsyncExitStack | None = None
_lock: asyncio.Lock | None = None
_settings: Settings | None = None


def configure(settings: Settings) -> None:
    global _settings
    _settings = settings


async def get_runtime() -> Runtime:
    """The process's runtime, opened on first use (on the event loop thread)."""
    global _runtime, _stack, _lock
    if _runtime is not None:
        return _runtime
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if _runtime is None:
            if _settings is None:
                raise RuntimeError("envrestore.workers.process_runtime.configure() was not called")
            stack = AsyncExitStack()
            _runtime = await stack.enter_async_context(open_runtime(_settings, kinds=job_kinds()))
            _stack = stack
    return _runtime


async def hand_back_steps(timeout: float) -> int:
    """Stop this process's running steps and hand their attempts back (see RunningSteps)."""
    if _runtime is None:
        return 0
    return await _runtime.running.hand_back(timeout)


async def close_runtime() -> None:
    global _runtime, _stack
    if _stack is not None:
        await _stack.aclose()
    _runtime = None
    _stack = None
