"""Developer tasks, one short session per job; dependencies come from pyproject.toml."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"

PYPROJECT = nox.project.load_toml("pyproject.toml")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (unit, in-process and end-to-end) with pytest and pytest-trio."""
    # The bench extra, so that the uvloop model and `bench --plot` are tested too.
    session.install(".[bench]", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style with ruff and types with mypy (strict)."""
    # The bench extra: mypy checks the bench's matplotlib calls against matplotlib's types.
    session.install(".[bench]", *nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the full benchmark (about 6 minutes on 2 cores; every wait in it is bounded) and
    write docs/benchmarks.json and docs/benchmarks.png.  Not part of CI: the figures depend on
    the machine.  Arguments after -- replace the defaults, e.g. `nox -s bench -- --quick`."""
    session.install(".[bench]")
    args = session.posargs or [
        "--json",
        "docs/benchmarks.json",
        "--plot",
        "docs/benchmarks.png",
    ]
    session.run("python", "-m", "trio_echo", "bench", *args)
