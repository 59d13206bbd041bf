"""Benchmarks of sessionstore against the real Cassandra and FerretDB servers.

Every figure is measured against a baseline taken in the same run, on the same servers,
with the raw drivers doing the same I/O (see docs/performance.md). Run it with::

    python3 -m nox -s bench            # starts the servers, writes bench-results/bench.json

or, with the servers already up (``scripts/servers up``)::

    .venv/bin/python -m benchmarks --out bench-results/bench.json

Nothing here is a test: nothing asserts, every goal is reported as met or missed.
"""
