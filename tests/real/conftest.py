"""Fixtures for the real-server tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.real.sqs import SqsQueue


@pytest.fixture
def sqs_queue(request: pytest.FixtureRequest) -> Iterator[SqsQueue]:
    """A fresh SQS queue with its dead-letter queue, deleted afterwards.

    Defaults are :func:`tests.real.sqs.fresh_queue`'s; change them with
    ``@pytest.mark.parametrize("sqs_queue", [{"max_receive_count": 1}], indirect=True)``.
    """
    from tests.real.sqs import fresh_queue  # boto3 only for the tests that use SQS

    options: dict[str, Any] = getattr(request, "param", {})
    with fresh_queue(**options) as queue:
        yield queue
