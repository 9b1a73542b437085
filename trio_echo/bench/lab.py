"""How big each model is, and the code a reader compares: generated, so that no count is typed.

A model's size is the code it runs that not every model runs: the transitive closure of the
``trio_echo`` modules its entry imports (every ``import`` in the source, those inside functions
included, found with :mod:`ast` without importing anything), minus the modules that all the
lab's models share (the configuration, the output formats, the listening sockets).  Its lines
are code lines: neither blank, nor comments, nor docstrings.  The figure is then "what this
model costs on top of the shared core", the same measure for a 30-line model and for the trio
model with its listener, stream and accelerator.

:data:`EXCERPTS` names, per model, the code a reader puts side by side (its handler, its
shutdown); :func:`excerpt` fetches it from the installed source, so the "reading the lab" page
(:mod:`.labpage`) always shows the code as it is.  A name that stops resolving fails a test
rather than the page.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import io
import textwrap
import tokenize
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import attrs

from trio_echo.models import MODELS, Model

__all__ = ["EXCERPTS", "ModelSize", "excerpt", "model_sizes", "shared_modules"]

PACKAGE = "trio_echo"

# Per model, (what it is, "module:qualified.name") of the code to read side by side, where a
# long function is cut to its heart: "module:name|first line|last line" (the text that starts
# the first line and the last line kept, each found once).
EXCERPTS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "trio": (
        (
            "the nursery tree: serve_listeners, the accepting scope, the grace closer",
            "trio_echo.server.serve:serve|with everything:|handle.accepting_stopped.set()",
        ),
        ("the handler (any trio.abc.Stream)", "trio_echo.server.handler:Handler.__call__"),
        (
            "after the grace period",
            "trio_echo.server.shutdown:Registry.close_after_grace|handle = self.handle|"
            "await self._left.park()",
        ),
    ),
    "trio-stock": (("listeners", "trio_echo.models.trio_stock:_stock_listeners"),),
    "anyio-trio": (
        ("handler", "trio_echo.models.anyio_model:_Server.handle"),
        ("serve and shutdown", "trio_echo.models.anyio_model:_Server.serve"),
    ),
    "asyncio": (
        ("serve", "trio_echo.models.asyncio_streams:serve"),
        ("handler", "trio_echo.models.asyncio_streams:handle"),
        ("shutdown", "trio_echo.models._aio:Lab.shutdown"),
    ),
    "anyio-asyncio": (
        (
            "the read-ahead bound anyio's asyncio backend lacks",
            "trio_echo.models.anyio_model:_reading_only_in_receive",
        ),
    ),
    "asyncio-protocol": (
        ("bytes in", "trio_echo.models.asyncio_protocol:EchoProtocol.buffer_updated"),
        ("flow control", "trio_echo.models.asyncio_protocol:EchoProtocol.pause"),
        ("serve and shutdown", "trio_echo.models.asyncio_protocol:serve"),
    ),
    "gevent": (
        ("handler", "trio_echo.models.gevent_model:_Server.handle"),
        ("shutdown", "trio_echo.models.gevent_model:_Server.shutdown"),
    ),
    "asyncio-sock": (
        ("accept loop", "trio_echo.models.asyncio_sock:accept_loop"),
        ("handler", "trio_echo.models.asyncio_sock:handle"),
    ),
    "threads": (
        ("handler", "trio_echo.models.threads:_Server.serve"),
        ("shutdown", "trio_echo.models.threads:_Server.close_clients"),
    ),
    "sync": (("handler", "trio_echo.models.sync:_Server.serve_client"),),
}


@attrs.frozen
class ModelSize:
    """A model's own code: the modules beyond the shared core, and their code lines."""

    model: str
    modules: tuple[str, ...]
    lines: int


def _module_path(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    """The absolute module an ``from ... import`` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = current.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _executed(tree: ast.AST) -> Iterable[ast.AST]:
    """The nodes of a module that may run when it is used: all but the bodies of a lazy
    module ``__getattr__`` (a package's exports, imported only by whoever names them) and of
    ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


@cache
def _direct_imports(name: str) -> frozenset[str]:
    """The ``trio_echo`` modules that module ``name`` imports anywhere in its source."""
    path = _module_path(name)
    if path is None:
        return frozenset()
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in _executed(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, name, path.name == "__init__.py")
            found.add(module)
            # ``from trio_echo.bench import loadgen``: the name may be a module itself.
            found.update(
                f"{module}.{alias.name}"
                for alias in node.names
                if _is_module(f"{module}.{alias.name}")
            )
    mine = {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}
    # Importing a module runs its packages' __init__ first.
    for module in list(mine):
        parts = module.split(".")
        mine.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(m for m in mine if _module_path(m) is not None)


def closure(name: str) -> frozenset[str]:
    """Every ``trio_echo`` module that importing ``name`` (and running it) may import."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_direct_imports(module) - seen)
    return frozenset(seen)


def code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    source = path.read_text()
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT):
            continue
        if token.type in (tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def _entry_module(model: Model) -> str:
    return model.entry.partition(":")[0]


def shared_modules(models: Iterable[Model]) -> frozenset[str]:
    """The modules every one of ``models`` runs: the shared core, counted for none of them."""
    closures = [closure(_entry_module(m)) for m in models]
    return frozenset.intersection(*closures) if closures else frozenset()


def model_sizes(models: Mapping[str, Model] = MODELS) -> dict[str, ModelSize]:
    """Each model's own modules and code lines, beyond what all of ``models`` share."""
    shared = shared_modules(models.values())
    sizes: dict[str, ModelSize] = {}
    for name, model in models.items():
        own = sorted(closure(_entry_module(model)) - shared)
        lines = sum(code_lines(path) for m in own if (path := _module_path(m)) is not None)
        sizes[name] = ModelSize(name, tuple(own), lines)
    return sizes


def shared_lines(models: Mapping[str, Model] = MODELS) -> int:
    """The code lines of the shared core."""
    return sum(
        code_lines(path) for m in shared_modules(models.values()) if (path := _module_path(m))
    )


def _cut(lines: list[str], start: int, first: str, last: str) -> tuple[list[str], int]:
    """The lines from the one starting with ``first`` to the last one starting with ``last``."""
    stripped = [line.strip() for line in lines]
    begin = stripped.index(first) if first in stripped else None
    if begin is None:
        begin = next(i for i, line in enumerate(stripped) if line.startswith(first))
    end = max(i for i, line in enumerate(stripped) if line.startswith(last) and i >= begin)
    return lines[begin : end + 1], start + begin


def excerpt(reference: str) -> tuple[str, str]:
    """``("module.py:LINE", source)`` of ``"module:qualified.name"`` (or of the part of it that
    ``"...|first|last"`` names), from the source file (the module is imported: the name must
    exist, not merely be spelled in a comment)."""
    reference, *cut = reference.split("|")
    module_name, _, qualname = reference.partition(":")
    module = importlib.import_module(module_name)
    target: object = module
    for part in qualname.split("."):
        target = getattr(target, part)
    target = inspect.unwrap(target)  # type: ignore[arg-type]
    lines, start = inspect.getsourcelines(target)  # type: ignore[arg-type]
    if cut:
        lines, start = _cut(lines, start, *cut)
    path = Path(inspect.getsourcefile(target) or "")  # type: ignore[arg-type]
    relative = (
        "/".join(path.parts[path.parts.index(PACKAGE) :]) if PACKAGE in path.parts else path.name
    )
    return f"{relative}:{start}", textwrap.dedent("".join(lines)).rstrip() + "\n"
