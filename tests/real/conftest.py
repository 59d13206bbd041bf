"""Fixtures for the real-server tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.real.jobs_support import Names
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


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Names]:
    """A fresh table and collection, named in the ``SESSIONSTORE_*`` variables the
    command line reads; the working directory is ``tmp_path`` (where a command's default
    checkpoint file lands). Dropped afterwards."""
    from tests.real.jobs_support import create_names, drop_names

    created = asyncio.run(create_names())
    for key, value in created.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    try:
        yield created
    finally:
        asyncio.run(drop_names(created))
