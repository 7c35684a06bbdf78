"""The job's request, typed, as every step of the content pipeline reads it."""

from __future__ import annotations

from dataclasses import replace

from envrestore.pipelines.jobs.context import StepContext
from envrestore.pipelines.requests import CONTENT_REQUESTS, ContentRequest, RestoreRequest


def request_of(ctx: StepContext) -> ContentRequest:
    """The job's request, typed: a restore, an import or a clone."""
    request = CONTENT_REQUESTS.get(ctx.job.kind, RestoreRequest).from_params(ctx.job.params)
    if not request.target and ctx.job.target:  # queued before requests were stored
        request = replace(request, target=ctx.job.target)
    return request


def elements_of(ctx: StepContext) -> list[str]:
    return list(request_of(ctx).elements)
