"""``bench --baseline REV``: the trio model of another git revision, side by side with this one.

The revision's files are exported with ``git archive REV | tar -x`` into
``build/baseline-SHORT`` of the checkout the bench runs from (``build/`` is git-ignored; no
worktree metadata is left behind), once: a directory whose marker names the commit is reused.
Its server is ``python -m trio_echo --model trio`` started in that tree with the tree first on
``PYTHONPATH`` (:func:`.server.server_environment`), and before the run the bench checks that
such a process really imports the revision's package, not this checkout's or the editable
install's (:func:`check_import`).  A revision with C extensions (``[[tool.setuptools.ext-modules]]``
in its pyproject.toml: text mode's safety scan) has them built in place, as an install of it
would (:func:`build_extensions`); where they cannot be built, its summary says so, since it then
runs its pure-Python fallbacks.

The model is named ``trio@SHORT`` (``trio@d8d1f1a``): it runs in the same interleaved runs as
everything else, so the report's ``trio ÷ trio@SHORT`` ratios (:mod:`.ratios`) come from one run
on one machine state.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs

from trio_echo.bench.server import VARIANTS, Variant
from trio_echo.models import MODELS, Model

__all__ = [
    "Baseline",
    "BaselineError",
    "build_extensions",
    "check_import",
    "model",
    "prepare",
    "register",
    "resolve",
]

# What the export writes last, with the full commit: a directory without it (an interrupted
# export) is exported again.
MARKER = ".trio-echo-baseline"
GIT_TIMEOUT = 120.0


class BaselineError(Exception):
    """The revision cannot be run; the message is one line."""


@attrs.frozen
class Baseline:
    """A revision exported for the bench."""

    revision: str  # the full commit
    short: str
    subject: str  # its commit message's first line
    source: Path  # the exported tree
    imports: Path  # the trio_echo/__init__.py a server started there imports (checked)
    # Why its C extensions could not be built in place (None: built, or it has none).
    unbuilt: str | None = None

    @property
    def name(self) -> str:
        return f"trio@{self.short}"


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BaselineError(f"git {args[0]}: {exc}") from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise BaselineError(f"git {' '.join(args)}: {lines[-1] if lines else 'failed'}")
    return done.stdout.strip()


def resolve(revision: str, repo: Path) -> tuple[str, str, str]:
    """(full commit, short commit, subject) of ``revision`` in the git checkout around
    ``repo``."""
    if not revision or revision.startswith("-"):
        raise BaselineError(f"not a git revision: {revision!r}")
    try:
        full = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except BaselineError as exc:
        raise BaselineError(f"unknown git revision {revision!r} ({exc})") from exc
    short = _git(repo, "rev-parse", "--short=7", full)
    subject = _git(repo, "log", "-1", "--format=%s", full)
    return full, short, subject


def _export(repo: Path, revision: str, target: Path) -> None:
    """``git archive REVISION | tar -x -C target``, into a fresh directory renamed into place
    once complete."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(repo), "archive", "--format=tar", revision],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert archive.stdout is not None
    try:
        tar = subprocess.run(
            ["tar", "-x", "-C", str(partial)],
            stdin=archive.stdout,
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        archive.kill()
        raise BaselineError(f"cannot export {revision}: {exc}") from exc
    finally:
        archive.stdout.close()
        _, archive_err = archive.communicate(timeout=GIT_TIMEOUT)
    if archive.returncode != 0 or tar.returncode != 0:
        why = (archive_err or tar.stderr).decode(errors="replace").strip().splitlines()
        raise BaselineError(f"cannot export {revision}: {why[-1] if why else 'failed'}")
    (partial / MARKER).write_text(revision + "\n")
    partial.rename(target)


def check_import(source: Path) -> Path:
    """Check that a server started in ``source`` (:func:`.server.server_environment`) imports
    ``source``'s trio_echo, neither this checkout's nor the installed one: the ``__init__.py``
    it imports."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), env.get("PYTHONPATH")) if p)
    found, failure = _python(source, "import trio_echo; print(trio_echo.__file__)", 60, env=env)
    if failure is not None or not found:
        raise BaselineError(f"cannot import trio_echo from {source}: {failure or 'failed'}")
    if not Path(found).resolve().is_relative_to(source.resolve()):
        raise BaselineError(f"a server started in {source} would import {found} instead")
    return Path(found)


def prepare(revision: str, repo: Path | None = None) -> Baseline:
    """``revision`` exported under ``build/`` of the git checkout around ``repo`` (default: the
    working directory), checked (:func:`check_import`) and ready to run."""
    repo = Path.cwd() if repo is None else repo
    top = Path(_git(repo, "rev-parse", "--show-toplevel"))
    full, short, subject = resolve(revision, top)
    target = top / "build" / f"baseline-{short}"
    marker = target / MARKER
    if not (marker.is_file() and marker.read_text().strip() == full):
        _export(top, full, target)
    unbuilt = build_extensions(target)
    return Baseline(full, short, subject, target, check_import(target), unbuilt)


# Builds the extensions given as JSON in argv[1] in place, in the working directory.
_BUILD = """
import json, sys
from setuptools import Distribution, Extension
modules = [Extension(m["name"], m["sources"]) for m in json.loads(sys.argv[1])]
command = Distribution({"ext_modules": modules}).get_command_obj("build_ext")
command.inplace = True
command.ensure_finalized()
command.run()
"""


def build_extensions(source: Path) -> str | None:
    """Build the C extensions the tree's pyproject.toml declares, in place (a no-op once they
    are there); None when that worked or there are none, else why not, in a few words."""
    try:
        tomllib = importlib.import_module("tomllib")
    except ImportError:  # Python 3.10: no TOML parser in the standard library
        return "its C extensions were not built (Python 3.10 has no tomllib)"
    try:
        config: dict[str, Any] = tomllib.loads((source / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    modules = config.get("tool", {}).get("setuptools", {}).get("ext-modules", [])
    if not modules:
        return None
    spec = [{"name": m["name"], "sources": m["sources"]} for m in modules]
    _, failure = _python(source, _BUILD, 300, json.dumps(spec))
    return None if failure is None else f"its C extensions were not built ({failure})"


def _python(
    cwd: Path, code: str, timeout: float, *args: str, env: dict[str, str] | None = None
) -> tuple[str, str | None]:
    """Run ``python -c code args...`` in ``cwd``: (its stdout stripped, None), or ("", why it
    failed: the last line of its stderr, or the error that kept it from running)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", str(exc)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return "", lines[-1] if lines else f"exit status {done.returncode}"
    return done.stdout.strip(), None


def model(baseline: Baseline) -> Model:
    """The bench's model of the baseline: the trio model (the same flags), under its name."""
    return attrs.evolve(
        MODELS["trio"],
        name=baseline.name,
        summary=f"the trio model of commit {baseline.short} ({baseline.subject}), run from "
        f"{baseline.source}" + (f"; {baseline.unbuilt}" if baseline.unbuilt else ""),
    )


def register(baseline: Baseline) -> Model:
    """Make the baseline's name a server the bench can start (:data:`.server.VARIANTS`); its
    model."""
    VARIANTS[baseline.name] = Variant(
        "trio", (), source=baseline.source, revision=baseline.revision
    )
    return model(baseline)
