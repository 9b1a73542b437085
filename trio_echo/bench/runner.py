"""The run: every scenario for every model, with the progress bar.

Scenario by scenario, every model in turn, and in the echo scenarios measured run by measured
run (:func:`run_in_turns`); a model that is not installed, or a scenario it cannot do, gives a
skipped result with the reason (:func:`cannot_run`), so every model appears with every scenario.
Apart from :mod:`.cli`, which reads the flags, prepares the machine and writes the outputs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import threading
import time
from typing import Any, TextIO

from trio_echo.bench.lineup import REFERENCES, model_entry
from trio_echo.bench.scenarios import Context, Result, Scenario
from trio_echo.models import Model

__all__ = [
    "Progress",
    "cannot_run",
    "run_all",
    "run_alone",
    "run_in_lanes",
    "run_in_turns",
    "run_scenario",
]


class Progress:
    """A one-line ``\\r`` bar on a terminal; plain lines otherwise (CI logs, pipes)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._lock = threading.Lock()  # lanes report from several threads

    def step(self, label: str) -> None:
        with self._lock:
            self._step(label)

    def _step(self, label: str) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            width = 30
            filled = width * self.done // max(1, self.total)
            bar = "#" * filled + "." * (width - filled)
            line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f} s  {label}"
            self.stream.write("\r\x1b[K" + line[:120])
        else:
            self.stream.write(f"bench [{self.done + 1}/{self.total}] {elapsed:.0f} s: {label}\n")
        self.stream.flush()
        self.done += 1

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def cannot_run(model: Model, scenario: Scenario) -> Result | None:
    """Why ``model`` cannot run ``scenario`` (as a skipped result), or None."""
    why_not = model.available()
    if why_not is not None:
        return Result(skipped=f"model not available: {why_not}")
    if missing := sorted(set(scenario.flags) & set(model.unsupported)):
        why = f"the {model.name} model does not support {', '.join(missing)}"
        if model.name in REFERENCES:
            why = f"{why}: {REFERENCES[model.name]}"
        return Result(skipped=why)
    return None


def run_scenario(model: Model, scenario: Scenario, context: Context) -> Result:
    """One scenario for one model, or why it cannot run."""
    return cannot_run(model, scenario) or scenario.run(context, model)


def run_in_turns(
    models: list[Model], scenario: Scenario, context: Context, progress: Progress
) -> dict[str, Result]:
    """A scenario with sessions (echo) for every model: each model's server started and warmed
    up, then the measured runs in turns, model after model, ``repeats`` times; then the
    results.  Only one server is under load at any time; the others wait, idle."""
    assert scenario.session is not None
    results: dict[str, Result] = {}
    with contextlib.ExitStack() as servers:
        sessions = []
        for model in models:
            progress.step(f"{model.name}: {scenario.title}")
            skipped = cannot_run(model, scenario)
            if skipped is not None:
                results[model.name] = skipped
                continue
            session = servers.enter_context(scenario.session(context, model))
            session.start()
            sessions.append(session)
        for _ in range(max(1, context.sizes.repeats)):
            for session in sessions:
                session.measure()
        for session in sessions:
            results[session.model.name] = session.finish()
    return {model.name: results[model.name] for model in models}


def run_alone(model: Model, scenario: Scenario, context: Context, progress: Progress) -> Result:
    """One scenario for one model, a session scenario's measured runs one after the other."""
    progress.step(f"{model.name}: {scenario.title}")
    skipped = cannot_run(model, scenario)
    if skipped is not None or scenario.session is None:
        return skipped or scenario.run(context, model)
    with scenario.session(context, model) as session:
        session.start()
        for _ in range(max(1, context.sizes.repeats)):
            session.measure()
        return session.finish()


def run_in_lanes(
    models: list[Model], scenario: Scenario, context: Context, progress: Progress, lanes: int
) -> dict[str, Result]:
    """A scenario for ``lanes`` models at once: what ``--quick`` does, where the figures only
    show that every model runs every scenario (several servers at once measure each other)."""
    with concurrent.futures.ThreadPoolExecutor(lanes, thread_name_prefix="bench-lane") as pool:
        futures = {m.name: pool.submit(run_alone, m, scenario, context, progress) for m in models}
        return {name: future.result() for name, future in futures.items()}


def run_all(
    models: list[Model],
    scenarios: list[Scenario],
    context: Context,
    progress: Progress,
    lanes: int = 1,
) -> dict[str, Any]:
    """Every scenario for every model, as the report's ``models``.

    Scenario by scenario, every model in turn (and in the echo scenarios, measured run by
    measured run: :func:`run_in_turns`): the figures compared with each other (the trio model
    and its reference above all) are measured close together in time, so that a passing
    disturbance on a shared machine is less likely to fall on one of them only.  With
    ``lanes`` > 1, that many models at once (:func:`run_in_lanes`).
    """
    entries = {model.name: model_entry(model, context) for model in models}
    for scenario in scenarios:
        if lanes > 1:
            results = run_in_lanes(models, scenario, context, progress, lanes)
        elif scenario.session is not None:
            results = run_in_turns(models, scenario, context, progress)
        else:
            results = {}
            for model in models:
                progress.step(f"{model.name}: {scenario.title}")
                results[model.name] = run_scenario(model, scenario, context)
        for name, result in results.items():
            entries[name]["scenarios"][scenario.key] = result.to_json()
    return entries
