"""How S3's errors read to an operator: botocore and aiohttp failures as envrestore's
permanent and transient errors, each naming the bucket, the endpoint and the setting to check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiohttp
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from envrestore.pipelines.errors import (
    BadInput,
    EnvrestoreError,
    NotFound,
    PermanentError,
    Refused,
    TransientError,
    Unavailable,
)

MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
#: What a store that is down, unreachable or dropping connections raises.
_UNREACHABLE = (BotoConnectionError, HTTPClientError, IncompleteReadError, aiohttp.ClientError)
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
)


@contextlib.contextmanager
def translated(bucket: str, endpoint_url: str | None, *, key: str | None = None) -> Iterator[None]:
    """Turn botocore and aiohttp errors into envrestore's permanent/transient errors."""
    try:
        yield
    except ClientError as exc:
        raise from_client_error(exc, bucket, endpoint_url, key) from exc
    except _UNREACHABLE as exc:
        raise Unavailable(
            f"the object store at {endpoint_url} is not reachable "
            f"({type(exc).__name__}); check ENVRESTORE_S3_ENDPOINT_URL and that it is running",
            endpoint=endpoint_url,
            bucket=bucket,
        ) from exc
    except NoCredentialsError as exc:
        raise BadInput(
            "no S3 credentials were found; set ENVRESTORE_S3_ACCESS_KEY_ID and "
            "ENVRESTORE_S3_SECRET_ACCESS_KEY",
            endpoint=endpoint_url,
        ) from exc


def from_client_error(
    exc: ClientError, bucket: str, endpoint_url: str | None, key: str | None
) -> EnvrestoreError:
    """The envrestore error for one S3 error response."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    where = f"bucket {bucket!r} on {endpoint_url}"
    if code == "NoSuchBucket" or (key is None and code in MISSING_KEY_CODES):
        return NotFound(
            f"{where} does not exist; create it or set ENVRESTORE_S3_BUCKET",
            bucket=bucket,
            endpoint=endpoint_url,
        )
    if code in MISSING_KEY_CODES or code == "NoSuchUpload":
        return NotFound(f"object {key!r} does not exist in {where}", key=key, bucket=bucket)
    if code in _DENIED_CODES:
        return Refused(
            f"{where} refused the request ({code}); check ENVRESTORE_S3_ACCESS_KEY_ID, "
            "ENVRESTORE_S3_SECRET_ACCESS_KEY and the key's permissions",
            bucket=bucket,
            code=code,
        )
    if code == "InvalidRange":
        return BadInput(f"the byte range asked of {key!r} is outside the object", key=key)
    if code in {"PreconditionFailed", "412"}:
        return TransientError(f"object {key!r} changed while it was being read; retry", key=key)
    if status >= 500 or code in {"SlowDown", "InternalError", "ServiceUnavailable"}:
        return Unavailable(
            f"{where} failed with {code or status}; retry later",
            bucket=bucket,
            code=code,
        )
    return PermanentError(
        f"{where} rejected the request for {key!r}: {code} {error.get('Message', '')}".strip(),
        bucket=bucket,
        key=key,
        code=code,
    )
