"""Hide Linux-only pieces of the standard library from trio_echo, to test portability on Linux.

macOS and the BSDs have no ``select.epoll``; Windows has no ``socket.SO_REUSEPORT`` and the
BSDs' and macOS's does not spread connections (README, "Platforms").  CI runs Linux only, so
``nox -s portable`` runs the test suite a second time with those names hidden from our package:

* :data:`HIDDEN` names are removed from the ``select`` and ``socket`` modules that are imported
  *after* :func:`install`: ``sys.modules["select"]`` and ``sys.modules["socket"]`` become
  :class:`HidingModule` proxies that forward every other attribute (reads, writes and deletes)
  to the real module.  trio_echo, imported later, sees ``hasattr(select, "epoll") is False``.
* Trio itself keeps the real modules: :func:`install` imports it first, and its epoll I/O
  manager (``trio._core._io_epoll``) calls ``select.epoll()`` at run time through the module
  global it bound at import.  The standard library modules imported with it (``selectors``,
  ``subprocess``, ...) keep theirs too, as on macOS, where they have their own kqueue backends.
  Only the code imported afterwards -- ours, the tests', asyncio's -- sees the proxies.

Three ways in:

* ``import hide_linux`` hides at once (importing the module is installing it), so a ``.pth``
  file with a line naming this directory and a line ``import hide_linux`` hides in *every*
  Python process of that virtualenv: pytest, the ``python -m trio_echo`` servers the tests
  start and the ``--workers`` worker processes those start (``nox -s portable`` does that in a
  virtualenv of its own; no other one is touched).
* ``python tests/portable/hide_linux.py -m MODULE ARGS...`` (or ``-c CODE``) runs one program
  with the names hidden, like ``python -m MODULE``: tests/test_portable.py's way, in any run.
* ``pytest -p hide_linux`` also adds a header line naming what is hidden, and stops the run
  with a usage error if the hiding is not in effect (a ``.pth`` that was not read).

It is test tooling, not part of the package: it lives under tests/ in a directory of its own
(the ``.pth`` puts that directory, and nothing else, on ``sys.path``), imports nothing from
trio_echo, and is never installed.  Installing sets ``TRIO_ECHO_HIDDEN`` (``epoll,SO_REUSEPORT``)
in the environment, so that every process of the run, and a reader of its logs, can tell.

PYTEST_DONT_REWRITE: imported at start-up, before pytest could rewrite its asserts (it has none).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterable
from typing import Any

__all__ = ["ENV", "HIDDEN", "HidingModule", "hidden_in", "install", "installed"]

# What is hidden, per module: names, or prefixes ending in "*".
HIDDEN: dict[str, tuple[str, ...]] = {
    "select": ("epoll", "EPOLL*"),
    "socket": ("SO_REUSEPORT",),
}

# Set by install(); inherited by every child process.
ENV = "TRIO_ECHO_HIDDEN"
ENV_VALUE = "epoll,SO_REUSEPORT"

# Imported (bound to the real modules) before the proxies go in: Trio, and with it what it uses
# from the standard library (ssl, selectors, subprocess, ...).
_IMPORT_FIRST = ("trio",)


def _is_hidden(name: str, patterns: Iterable[str]) -> bool:
    return any(
        name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern
        for pattern in patterns
    )


class HidingModule(types.ModuleType):
    """A stand-in for a module in ``sys.modules``: every attribute of ``real`` except the
    ``hidden`` ones (names, or prefixes ending in ``*``), which raise ``AttributeError`` as on
    a platform that lacks them.  Writes and deletes go to the real module, so that a
    ``monkeypatch.setattr(socket, ...)`` is seen by everybody, Trio included."""

    def __init__(self, real: types.ModuleType, hidden: tuple[str, ...]) -> None:
        super().__init__(real.__name__, real.__doc__)
        state = self.__dict__
        state["__hiding_real__"] = real
        state["__hiding_names__"] = hidden
        for dunder in ("__file__", "__spec__", "__loader__", "__package__", "__all__"):
            if hasattr(real, dunder):
                state[dunder] = getattr(real, dunder)
        if "__all__" in state:
            state["__all__"] = [n for n in state["__all__"] if not _is_hidden(n, hidden)]

    def __getattr__(self, name: str) -> Any:
        if _is_hidden(name, self.__dict__["__hiding_names__"]):
            raise AttributeError(
                f"module {self.__name__!r} has no attribute {name!r} "
                f"(hidden by tests/portable/hide_linux.py: {ENV}={ENV_VALUE})"
            )
        return getattr(self.__dict__["__hiding_real__"], name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self.__dict__["__hiding_real__"], name, value)

    def __delattr__(self, name: str) -> None:
        if _is_hidden(name, self.__dict__["__hiding_names__"]):
            raise AttributeError(name)  # already missing here; the real module keeps it
        delattr(self.__dict__["__hiding_real__"], name)

    def __dir__(self) -> list[str]:
        hidden = self.__dict__["__hiding_names__"]
        return sorted(n for n in dir(self.__dict__["__hiding_real__"]) if not _is_hidden(n, hidden))

    def __repr__(self) -> str:
        return f"<module {self.__name__!r} (hiding {', '.join(self.__dict__['__hiding_names__'])})>"


def _is_proxy(module: object) -> bool:
    # Not isinstance: run as a script, this file is __main__ and hide_linux both.
    return isinstance(module, types.ModuleType) and "__hiding_real__" in vars(module)


def installed() -> bool:
    """Whether the proxies are in ``sys.modules`` (in this process)."""
    return all(_is_proxy(sys.modules.get(name)) for name in HIDDEN)


def hidden_in(module: types.ModuleType) -> list[str]:
    """The names of :data:`HIDDEN` that the real module has but ``module`` does not show:
    what a test asserts to check that the hiding reached a module."""
    real = module.__dict__.get("__hiding_real__", module)
    return sorted(
        name
        for name in dir(real)
        if _is_hidden(name, HIDDEN.get(real.__name__, ())) and not hasattr(module, name)
    )


def install() -> None:
    """Import Trio (and what it needs) with the real modules, then put the proxies in
    ``sys.modules``.  Idempotent.  Refuses if trio_echo was imported already: its modules
    would keep the real ones."""
    if installed():
        return
    leaked = sorted(name for name in sys.modules if name.split(".")[0] == "trio_echo")
    if leaked:
        raise RuntimeError(f"hide_linux: install it before trio_echo is imported ({leaked[0]})")
    for name in _IMPORT_FIRST:
        __import__(name)
    for name, hidden in HIDDEN.items():
        real = sys.modules[name]
        if not _is_proxy(real):
            sys.modules[name] = HidingModule(real, hidden)
    os.environ[ENV] = ENV_VALUE


# ---- pytest plugin (pytest -p hide_linux) ------------------------------------------------------


def pytest_configure(config: Any) -> None:
    if not installed():
        import pytest

        raise pytest.UsageError(
            "pytest -p hide_linux: the hiding is not in effect in this process "
            "(was the virtualenv's .pth read? see noxfile.py, session portable)"
        )


def pytest_report_header(config: Any) -> str:
    return (
        f"portable run ({ENV}={os.environ.get(ENV, '')}): select.epoll, select.EPOLL* and "
        "socket.SO_REUSEPORT are hidden from trio_echo and the tests, as on macOS/BSD"
    )


# ---- python hide_linux.py -m MODULE ARGS... / -c CODE ------------------------------------------


def _main(argv: list[str]) -> None:
    import runpy

    if len(argv) < 2 or argv[0] not in ("-m", "-c"):
        sys.exit("usage: python hide_linux.py -m MODULE [ARGS...] | -c CODE [ARGS...]")
    # This directory is sys.path[0] when run as a script: not the program's business.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.modules.setdefault("hide_linux", sys.modules["__main__"])
    install()
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    _main(sys.argv[1:])
else:
    install()
