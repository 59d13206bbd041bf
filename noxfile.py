"""Developer and CI sessions. ``nox`` alone runs lint, typecheck, docs and tests."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "docs", "tests"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

SERVERS = "scripts/servers"


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[all,lint]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Run the examples in docs/ and in the docstrings, so the docs stay true."""
    session.install("-e", ".[all,test]")
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--doctest-glob=*.md",
        "--doctest-modules",
        "docs",
        "sessionstore",
        "-o",
        "testpaths=",
    )


@nox.session
def unit(session: nox.Session) -> None:
    """The tests that need no server (in-memory backends, fakes, CLI)."""
    session.install("-e", ".[all,test]")
    session.run("pytest", "-m", "not real", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, with the real Cassandra, FerretDB and ElasticMQ started and stopped."""
    session.install("-e", ".[all,test]")
    session.run("python", SERVERS, "up", external=True)
    try:
        session.run("pytest", *session.posargs)
    finally:
        session.run("python", SERVERS, "down", external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks on the real servers vs raw-driver baselines: bench-results/bench.json.

    Starts the servers like ``tests`` (``up`` is a no-op when they already run) and leaves
    them running: other sessions or people may be using them. ``nox -s bench -- --quick``
    is a smoke run; any other arguments go to ``python -m benchmarks``.
    """
    session.install("-e", ".[all,bench]")
    session.run("python", SERVERS, "up", external=True)
    session.run("python", "-m", "benchmarks", "--out", "bench-results/bench.json", *session.posargs)


@nox.session
def rehearse(session: nox.Session) -> None:
    """The main job on its embedded default: a migration rehearsal on in-memory stores."""
    session.install("-e", ".[cli]")
    session.run("sessionstore", "rehearse", *session.posargs)
