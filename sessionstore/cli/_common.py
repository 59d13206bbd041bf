"""What every command shares: exit codes, connection flags, probing, signals, output."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sessionstore._errors import (
    BackendError,
    BackendRejectedError,
    ConfigurationError,
    InvalidSessionError,
)
from sessionstore.backends.base import SessionBackend
from sessionstore.jobs.settings import ConnectionSettings
from sessionstore.phases import Store

_T = TypeVar("_T")

#: Exit codes (docs/cli.md): scripts can rely on them.
EXIT_OK = 0
#: The job ran and found differences, or some units failed.
EXIT_FAILED = 1
#: Bad usage or input; nothing was changed.
EXIT_USAGE = 2
#: A store (or LaunchDarkly) is unreachable or refused the credentials; nothing changed.
EXIT_UNREACHABLE = 3
#: Interrupted by SIGINT or SIGTERM; completed units are checkpointed.
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """Ends a command with a message on stderr and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def ratio(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def add_output_flags(parser: argparse.ArgumentParser, *, progress: bool = True) -> None:
    """--json, --report FILE, --no-progress, --verbose."""
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print the report as JSON")
    group.add_argument("--report", type=Path, metavar="FILE", help="also write the JSON here")
    if progress:
        group.add_argument(
            "--no-progress", action="store_true", help="no progress bar (off when not a TTY)"
        )
    group.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """The store flags; each defaults to its environment variable (docs/cli.md)."""
    c = parser.add_argument_group("Cassandra (default: SESSIONSTORE_CASSANDRA_* variables)")
    c.add_argument("--cassandra-hosts", metavar="H1,H2", help="contact points")
    c.add_argument("--cassandra-port", type=int, metavar="PORT")
    c.add_argument("--cassandra-keyspace", metavar="NAME")
    c.add_argument("--cassandra-table", metavar="NAME")
    c.add_argument("--cassandra-local-dc", metavar="DC")
    c.add_argument("--cassandra-username", metavar="USER")
    c.add_argument(
        "--cassandra-password-file",
        type=Path,
        metavar="FILE",
        help="file holding the password (or SESSIONSTORE_CASSANDRA_PASSWORD)",
    )
    c.add_argument("--cassandra-consistency", metavar="LEVEL")
    c.add_argument("--cassandra-protocol-version", type=int, metavar="N")
    c.add_argument("--cassandra-tls-ca-file", type=Path, metavar="PEM")
    c.add_argument(
        "--cassandra-allow-plaintext-credentials",
        action="store_const",
        const=True,
        help="send the username and password without TLS (loopback test clusters only)",
    )
    d = parser.add_argument_group("DocumentDB (default: SESSIONSTORE_* variables)")
    d.add_argument(
        "--mongodb-uri",
        metavar="URI",
        help="prefer SESSIONSTORE_MONGODB_URI: flags are visible in process lists",
    )
    d.add_argument("--documentdb-database", metavar="NAME")
    d.add_argument("--documentdb-collection", metavar="NAME")
    d.add_argument("--documentdb-tls-ca-file", type=Path, metavar="PEM")
    d.add_argument(
        "--documentdb-no-tls",
        dest="documentdb_tls",
        action="store_const",
        const=False,
        help="connect without TLS (loopback test servers only; TLS is on by default)",
    )
    parser.add_argument("--tls-ca-file", type=Path, metavar="PEM", help="CA bundle of both stores")
    parser.add_argument("--request-timeout", type=positive_float, metavar="SECONDS")


_FLAG_FIELDS = (
    "cassandra_hosts",
    "cassandra_port",
    "cassandra_keyspace",
    "cassandra_table",
    "cassandra_local_dc",
    "cassandra_username",
    "cassandra_consistency",
    "cassandra_protocol_version",
    "cassandra_tls_ca_file",
    "cassandra_allow_plaintext_credentials",
    "mongodb_uri",
    "documentdb_database",
    "documentdb_collection",
    "documentdb_tls",
    "documentdb_tls_ca_file",
    "tls_ca_file",
    "request_timeout",
)


def read_secret_file(path: Path, what: str) -> str:
    """The first line of a secret file; errors never show the content."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the {what} file {str(path)!r}: {exc}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigurationError(f"the {what} file {str(path)!r} is empty")
    return lines[0]


def connection_settings(args: argparse.Namespace) -> ConnectionSettings:
    """Environment first, then the flags that were given."""
    overrides: dict[str, Any] = {f: getattr(args, f, None) for f in _FLAG_FIELDS}
    password_file = getattr(args, "cassandra_password_file", None)
    if password_file is not None:
        overrides["cassandra_password"] = read_secret_file(password_file, "Cassandra password")
    return ConnectionSettings.from_env(**overrides)


def setup_logging(verbose: bool) -> None:
    """Our messages to stderr; the drivers' own chatter only with --verbose."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The Cassandra driver logs connection failures with tracebacks; the command prints
    # one clear message instead.
    for name in ("cassandra", "pymongo"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)


async def probe(backend: SessionBackend, role: str, where: str) -> None:
    """Open ``backend`` and read one key: proves reachability and credentials, writes nothing."""

    async def read_one() -> None:
        await backend.__aenter__()
        await backend.get(uuid.UUID(int=0))

    await probed(read_one(), role, where)


async def probed(call: Awaitable[_T], role: str, where: str) -> _T:
    """Await a read-only ``call`` to a store or queue; its failure ends the command.

    Bad settings are exit 2; refused credentials and unreachable servers exit 3.
    """
    try:
        return await call
    except (ConfigurationError, InvalidSessionError) as exc:
        raise CommandError(EXIT_USAGE, f"{role} {where}: {exc}") from None
    except BackendRejectedError as exc:
        raise CommandError(
            EXIT_UNREACHABLE,
            f"{role} {where} refused the request (credentials or permissions?): {exc}",
        ) from None
    except BackendError as exc:
        raise CommandError(EXIT_UNREACHABLE, f"cannot reach the {role} {where}: {exc}") from None


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, message: str) -> Iterator[None]:
    """The first SIGTERM/SIGINT sets ``stop`` (finish what is in hand), a second cancels.

    ``message`` is printed at the first signal. Afterwards the signals cancel the
    command, as :func:`run` has them do (exit 130).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal() -> None:
        if stop.is_set():
            task.cancel()
            return
        info(message)
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)


def run(coro: Coroutine[Any, Any, int], *, interrupted_hint: str = "") -> int:
    """Run a command's coroutine: SIGINT/SIGTERM cancel it cleanly (exit 130)."""

    async def guarded() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await coro
        except asyncio.CancelledError:
            error(f"interrupted{'; ' + interrupted_hint if interrupted_hint else ''}")
            return EXIT_INTERRUPTED
        finally:
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    try:
        return asyncio.run(guarded())
    except CommandError as exc:
        error(str(exc))
        return exc.code
    except (ConfigurationError, InvalidSessionError) as exc:
        error(str(exc))
        return EXIT_USAGE


def error(message: str) -> None:
    """One line on stderr, prefixed like argparse's errors."""
    print(f"sessionstore: error: {message}", file=sys.stderr)


def info(message: str) -> None:
    """A status line on stderr (stdout stays for the report)."""
    print(message, file=sys.stderr)


def write_json(data: dict[str, Any], *, to_stdout: bool, path: Path | None) -> None:
    """The JSON report to stdout and/or a file."""
    text = json.dumps(data, indent=2, sort_keys=False)
    if to_stdout:
        print(text)
    if path is not None:
        try:
            path.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            error(f"cannot write the report to {str(path)!r}: {exc.strerror}")


def store_choice(text: str) -> Store:
    """argparse type: a store name."""
    try:
        return Store(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be 'cassandra' or 'documentdb'") from None


async def aclose_all(*backends: SessionBackend | None) -> None:
    """Close what was opened; closing errors are not the command's result."""
    for backend in backends:
        if backend is not None:
            with contextlib.suppress(Exception):
                await backend.aclose()


def env_path(variable: str, default: str) -> Path:
    """A path from the environment, or the default."""
    return Path(os.environ.get(variable) or default)
