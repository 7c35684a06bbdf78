"""Prometheus metrics of the step protocol and of the HTTP API.

The runner (pipelines/jobs/runner.py) calls the `*_finished`/`*_failed`
functions at the few places where a step or job ends: the outcome, the
duration and the bytes are known there, so no step records its own metrics.

Worker processes write these into prometheus_client's multiprocess files
(`PROMETHEUS_MULTIPROC_DIR`, set by `envrestore worker`), which one
exposition process sums (observability/worker_exposition.py). That is why
there is no gauge here: the queue gauges are read from the ledger at scrape
time (observability/ledger_gauges.py), never kept per process.

Label values are bounded: job kinds and step names come from the catalog,
error classes from the code's exception types, HTTP routes are templates
(`/jobs/{job_id}`), never raw paths.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

#: Steps and jobs run from under a second (a rewrite) to hours (a big import).
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
#: Bytes a step moved: 1 KiB to 1 TiB, by powers of 4.
BYTES_BUCKETS = tuple(float(1024 * 4**i) for i in range(16))
#: The switch window is meant to be short: milliseconds to a few seconds.
WINDOW_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: API requests: a cached poll answers in a millisecond, an upload start in a few.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

JOB_DURATION = Histogram(
    "envrestore_job_duration_seconds",
    "Seconds from a job's submission to its end, by kind and outcome.",
    ["kind", "outcome"],
    buckets=DURATION_BUCKETS,
)
STEP_DURATION = Histogram(
    "envrestore_step_duration_seconds",
    "Seconds one attempt of a step ran, by kind, step and outcome "
    "(succeeded, failed, retrying, released).",
    ["kind", "step", "outcome"],
    buckets=DURATION_BUCKETS,
)
STEP_BYTES = Histogram(
    "envrestore_step_bytes",
    "Bytes a finished step moved (its progress counter), by kind and step.",
    ["kind", "step"],
    buckets=BYTES_BUCKETS,
)
FAILURES = Counter(
    "envrestore_step_failures",
    "Step attempts that raised, by kind, step and error class "
    "(retried ones included; WorkerDied for attempts whose worker died).",
    ["kind", "step", "error_class"],
)
LEASE_WAITS = Counter(
    "envrestore_lease_waits",
    "Times a step was put off because another job held its environment's lease.",
    ["kind", "step"],
)
LEASE_WAIT_SECONDS = Counter(
    "envrestore_lease_wait_seconds",
    "Upper bounds of the lease waits: each put-off step adds the most it waits (30 s), "
    "though it is woken as soon as the job ahead lets the lease go, usually sooner.",
    ["kind", "step"],
)
SWITCH_WINDOW = Histogram(
    "envrestore_switch_window_seconds",
    "How long a restore's environment showed mixed or missing content while switching.",
    ["kind"],
    buckets=WINDOW_BUCKETS,
)
HTTP_DURATION = Histogram(
    "envrestore_http_request_duration_seconds",
    "API request durations by route template, method and status code.",
    ["route", "method", "status"],
    buckets=HTTP_BUCKETS,
)

#: The error class of an attempt abandoned because its worker died each time.
WORKER_DIED = "WorkerDied"


def step_finished(kind: str, step: str, outcome: str, seconds: float, nbytes: int = 0) -> None:
    """One attempt ended: `succeeded` (its bytes counted), `failed`, `retrying` or `released`."""
    STEP_DURATION.labels(kind, step, outcome).observe(max(seconds, 0.0))
    if outcome == "succeeded":
        STEP_BYTES.labels(kind, step).observe(max(nbytes, 0))


def step_failed(kind: str, step: str, error_class: str) -> None:
    """An attempt raised `error_class` (the exception's type name)."""
    FAILURES.labels(kind, step, error_class).inc()


def job_finished(kind: str, outcome: str, seconds: float) -> None:
    """A job reached `succeeded`, `failed` or `cancelled`, `seconds` after its submission."""
    JOB_DURATION.labels(kind, outcome).observe(max(seconds, 0.0))


def lease_waited(kind: str, step: str, seconds: float) -> None:
    """A step was put off, for `seconds` at most (it is woken earlier when the lease is
    let go), because its environment's lease was held."""
    LEASE_WAITS.labels(kind, step).inc()
    LEASE_WAIT_SECONDS.labels(kind, step).inc(seconds)


def switch_window(kind: str, seconds: float) -> None:
    """A restore's switch reported its window (outputs `window_seconds`)."""
    SWITCH_WINDOW.labels(kind).observe(max(seconds, 0.0))


def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    """One API request, by its route template (not the raw path: bounded labels)."""
    HTTP_DURATION.labels(route, method.upper(), str(status)).observe(max(seconds, 0.0))
