"""Running a step's parallel parts so that one failure stops them all."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def all_or_none(*coros: Coroutine[Any, Any, T]) -> list[T]:
    """Like `asyncio.gather`, but the first failure cancels the others and is raised itself.

    With `gather`, a sibling keeps running after the step failed: it can still
    upload an object after the job's cleanup ran. Here nothing outlives the
    call, and the caller gets the real error, not an ExceptionGroup.
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coro) for coro in coros]
    except BaseExceptionGroup as failed:
        errors = [e for e in failed.exceptions if not isinstance(e, asyncio.CancelledError)]
        raise (errors or list(failed.exceptions))[0] from None
    return [task.result() for task in tasks]
