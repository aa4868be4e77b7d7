"""Development sessions: ``nox`` runs tests, typing, lint and docs."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "typing", "lint", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on asyncio and trio."""
    session.install(".[tests]")
    session.run("pytest", *session.posargs)


@nox.session
def typing(session: nox.Session) -> None:
    """Type-check src, tests, examples, benchmarks, this file and the docs' code blocks
    with mypy --strict."""
    session.install(".[typing]")
    session.run("mypy", *session.posargs)
    blocks = Path(session.create_tmp()) / "doc-blocks"
    session.run("python", "tests/docs_blocks.py", str(blocks))
    session.run("mypy", "--strict", str(blocks))


@nox.session
def lint(session: nox.Session) -> None:
    """Run the pre-commit hooks on every file."""
    session.install("pre-commit")
    session.run("pre-commit", "run", "--all-files", "--show-diff-on-failure")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation, failing on warnings, and run every code block in it."""
    session.install(".[docs,tests]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run(
        "pytest", "-p", "no:cacheprovider", "tests/test_docs.py", "tests/test_docstrings.py"
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (memable beside the SQLite floor and DBOS Transact)."""
    session.install(".[fast]", "trio", "dbos")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def crash(session: nox.Session) -> None:
    """Run the long crash and load tests (many SIGKILLs)."""
    session.install(".[tests]")
    session.run(
        "pytest", "tests/crash", "-m", "slow", "-s", "-p", "no:cacheprovider", *session.posargs
    )
