"""The job's request, typed, as every step of the content pipeline reads it."""

from __future__ import annotations

from dataclasses import replace

from pipelines.jobs.context import StepContext
from pipelines.requests import CloneRequest, ContentRequest, ImportRequest, RestoreRequest


def request_of(ctx: StepContext) -> ContentRequest:
    """The job's request, typed: a restore from a backup or an import."""
    if ctx.job.kind == ImportRequest.kind:
        return ImportRequest.from_params(ctx.job.params)
    if ctx.job.kind == CloneRequest.kind:
        return CloneRequest.from_params(ctx.job.params)
    request = RestoreRequest.from_params(ctx.job.params)
    if not request.target and ctx.job.target:  # queued before requests were stored
        request = replace(request, target=ctx.job.target)
    return request


def elements_of(ctx: StepContext) -> list[str]:
    return list(request_of(ctx).elements)
