"""What every SQS user in the library shares: the client, and errors mapped at the boundary.

boto3 (extra ``sqs``) is synchronous; each call runs in a worker thread so the event
loop never waits on the network. The same code talks to AWS or, with ``endpoint_url``,
to any SQS-compatible server (the tests use ElasticMQ). Credentials come from boto3's
default chain (environment, profile, instance or task role), never from here.

Example::

    settings = SqsSettings(queue_url="https://sqs.eu-west-1.amazonaws.com/123/repairs")
    client = settings.client()
    reply = await sqs_call(client.get_queue_attributes, "stats", QueueUrl=settings.queue_url,
                           AttributeNames=["ApproximateNumberOfMessages"])
"""

from __future__ import annotations

import asyncio
import functools
import os
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sessionstore._errors import (
    BackendError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

__all__ = [
    "SqsSettings",
    "aws_error_code",
    "map_sqs_error",
    "region_of",
    "sqs_call",
    "sqs_settings",
]

_T = TypeVar("_T")

#: The store name SQS errors carry.
STORE = "sqs"

# Error codes that mean "try again later" rather than "this request is wrong".
_RETRYABLE = frozenset(
    {
        "ServiceUnavailable",
        "InternalError",
        "RequestThrottled",
        "ThrottlingException",
        "AWS.SimpleQueueService.ServiceUnavailable",
    }
)


class SqsSettings(BaseModel):
    """Where a queue is: its URL, and for a non-AWS server its endpoint.

    ``region`` defaults to the one in the queue URL (``sqs.<region>.amazonaws.com``), then
    to ``AWS_REGION``/``AWS_DEFAULT_REGION``. ``endpoint_url`` (an SQS-compatible server
    such as ElasticMQ) defaults to ``SESSIONSTORE_SQS_ENDPOINT`` when that is set.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue_url: str
    endpoint_url: str | None = Field(
        default_factory=lambda: os.environ.get("SESSIONSTORE_SQS_ENDPOINT") or None
    )
    region: str | None = None
    #: Seconds for the HTTP connect and read (a long poll adds its wait to the read).
    timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("queue_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urllib.parse.urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or not parsed.path:
            raise ValueError("must be a queue URL, https://sqs.<region>.amazonaws.com/<id>/<name>")
        return value

    def region_name(self) -> str:
        """The region the client will use; ConfigurationError if none is known."""
        region = self.region or region_of(self.queue_url) or _env_region()
        if region is None:
            raise ConfigurationError("no AWS region: set region=, AWS_REGION or AWS_DEFAULT_REGION")
        return region

    def client(self) -> SQSClient:
        """A boto3 SQS client for this queue (nothing connects until the first call)."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ConfigurationError(
                "SQS needs the 'sqs' extra: pip install sessionstore[sqs]"
            ) from exc
        region = self.region_name()
        config = Config(
            connect_timeout=self.timeout_seconds,
            # A long poll of up to 20 s is part of the read.
            read_timeout=self.timeout_seconds + 20,
            retries={"mode": "standard", "max_attempts": 3},
            # Calls run in asyncio's default thread pool (at most 32 threads): one
            # connection each, so none waits for another's or is opened and discarded.
            max_pool_connections=32,
        )
        session = boto3.session.Session()
        return session.client(
            "sqs", region_name=region, endpoint_url=self.endpoint_url, config=config
        )


def sqs_settings(queue_url: str, **options: Any) -> SqsSettings:
    """``SqsSettings`` from the options that are not None; ConfigurationError if invalid.

    The message names the field, not the value.
    """
    values = {k: v for k, v in options.items() if v is not None}
    try:
        return SqsSettings(queue_url=queue_url, **values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid SQS settings: {problems}") from None


def region_of(queue_url: str) -> str | None:
    """The region named in an AWS queue URL, or None (another server's URL).

    >>> region_of("https://sqs.eu-west-1.amazonaws.com/123456789012/repairs")
    'eu-west-1'
    """
    host = urllib.parse.urlsplit(queue_url).hostname or ""
    parts = host.split(".")
    if len(parts) >= 4 and parts[0] == "sqs" and parts[-2:] == ["amazonaws", "com"]:
        return parts[1]
    return None


def _env_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


async def sqs_call(call: Callable[..., _T], operation: str, **kwargs: Any) -> _T:
    """Run one boto3 call in a worker thread; botocore errors become the library's."""
    try:
        return await asyncio.to_thread(functools.partial(call, **kwargs))
    except Exception as exc:
        mapped = map_sqs_error(exc, operation)
        if mapped is None:
            raise
        raise mapped from exc


def map_sqs_error(exc: BaseException, operation: str) -> BackendError | None:
    """The library's error for a botocore exception (None if ``exc`` is not one).

    Messages name the operation, the exception class and the AWS error code only.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    kind = type(exc).__name__
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "?"))
        message = f"{operation} failed ({kind} {code})"
        if code in _RETRYABLE:
            return BackendUnavailableError(message, store=STORE)
        return BackendRejectedError(message, store=STORE)
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return BackendTimeoutError(f"{operation} timed out ({kind})", store=STORE)
    if isinstance(exc, EndpointConnectionError):
        return BackendUnavailableError(f"{operation} failed ({kind})", store=STORE)
    if isinstance(exc, NoCredentialsError):
        return BackendRejectedError(f"{operation} failed (no AWS credentials)", store=STORE)
    if isinstance(exc, BotoCoreError):
        return BackendError(f"{operation} failed ({kind})", store=STORE)
    return None


def aws_error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError``, or of the one a mapped error wraps."""
    from botocore.exceptions import ClientError

    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, ClientError):
            return str(candidate.response.get("Error", {}).get("Code", "")) or None
    return None
