"""Where the c10k shutdown's time goes: a SIGTERM -> exit timeline of ``python -m trio_echo``.

Starts the server (pinned to CPU 0; this script and the C load generator's connections to CPU 1
with ``taskset -c 1``), holds N connections that each had one echo, sends SIGTERM with
``--grace 1`` and prints, in seconds after the signal, when each phase ended: the grace period
(the closer starts), the first and last handler gone, ``serve()``, ``trio.run`` and ``atexit``,
then the process itself; with the server's CPU time (user, system) from the end of the grace
period to ``atexit`` and the garbage collector's runs after the signal (``gc.callbacks``).
``--baseline DIR`` runs the package found in DIR instead (``git archive REV trio_echo | tar -x
-C DIR``), in turns with this checkout, for before/after pairs of the same minute::

    taskset -c 1 python tools/shutdown_phases.py                      # one run, 10,000 clients
    taskset -c 1 python tools/shutdown_phases.py --baseline /tmp/base --rounds 5

The phases come from wrappers put around the server's functions before it starts (see
:func:`_serve_instrumented`); the server itself is unchanged.  docs/performance.md (round 3)
has what it showed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any


def _serve_instrumented(phases_path: str, argv: list[str]) -> None:
    """The server side: ``python -m trio_echo ARGV`` with each phase's end time recorded."""
    import atexit
    import gc
    import resource

    import trio

    import trio_echo.server.app as app
    import trio_echo.server.shutdown as sd

    marks: dict[str, float] = {}
    cpu: dict[str, tuple[float, float]] = {}

    def mark(name: str) -> None:
        marks.setdefault(name, time.monotonic())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu.setdefault(name, (usage.ru_utime, usage.ru_stime))

    def wrap_sync(owner: Any, name: str, before: Any) -> None:
        inner = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            before(*args)
            return inner(*args, **kwargs)

        setattr(owner, name, wrapper)

    def wrap_after(owner: Any, name: str, phase: str, is_async: bool) -> None:
        inner = getattr(owner, name)
        if is_async:

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await inner(*args, **kwargs)
                finally:
                    mark(phase)
        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return inner(*args, **kwargs)
                finally:
                    mark(phase)

        setattr(owner, name, wrapper)

    def left(registry: Any) -> None:
        if registry.closing:
            mark("first handler gone")
            if not registry.live:
                mark("last handler gone")

    wrap_sync(sd, "end_receiving", lambda stream: mark("grace over, closer starts"))
    wrap_sync(sd.Registry, "left", left)
    wrap_after(app, "serve", "serve() returns", True)
    wrap_after(app, "run", "app.run returns", True)
    wrap_after(trio, "run", "trio.run returns", False)
    collections: list[tuple[int, float, float]] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.monotonic()
        else:
            collections.append((info["generation"], started[0], time.monotonic() - started[0]))

    gc.callbacks.append(on_gc)

    def done() -> None:
        mark("atexit")
        gc.callbacks.remove(on_gc)
        begin = cpu.get("grace over, closer starts", cpu["atexit"])
        report = {
            "marks": marks,
            "cpu": [cpu["atexit"][0] - begin[0], cpu["atexit"][1] - begin[1]],
            "gc": collections,
        }
        with open(phases_path, "w") as f:
            json.dump(report, f)

    atexit.register(done)
    from trio_echo.cli import main as cli

    sys.argv = ["trio_echo", *argv]
    exit_program = getattr(cli, "exit_program", sys.exit)  # older revisions: sys.exit
    exit_program(cli.main())


def _one_run(connections: int, path: str | None) -> str:
    from trio_echo.bench import loadgen

    binary = loadgen.build()
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = path
    with tempfile.TemporaryDirectory() as tmp:
        phases_path = os.path.join(tmp, "phases.json")
        flags = ["--port", "0", "--log-level", "notice", "--echo", "--quiet", "--grace", "1"]
        proc = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, __file__, "--serve", phases_path, *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stderr is not None
        line = ""
        while "listening on" not in line:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise SystemExit(f"the server did not start (status {proc.returncode})")
        found = re.search(r":(\d+)", line.split("listening on")[1])
        assert found is not None
        with loadgen.Hold(binary, int(found[1]), connections, 30) as hold:
            hold.ready()
            time.sleep(0.3)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            total = time.monotonic() - t0
            hold.finish()
        with open(phases_path) as f:
            report = json.load(f)
    lines = [f"  {name:28s} {at - t0:7.3f}" for name, at in report["marks"].items()]
    lines.append(f"  {'process gone':28s} {total:7.3f}")
    full = [f"{d:.3f} s" for generation, at, d in report["gc"] if generation == 2 and at >= t0]
    user, system = report["cpu"]
    return "\n".join(
        [
            f"exit {total - 1:.3f} s beyond --grace 1, status {proc.returncode}; CPU from the end"
            f" of the grace period to atexit: user {user:.3f} s, system {system:.3f} s;"
            f" full collections after SIGTERM: {', '.join(full) or 'none'}",
            *lines,
        ]
    )


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        _serve_instrumented(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--baseline", metavar="DIR", help="also run the trio_echo in DIR")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.rounds):
        if args.baseline:
            print("before:", _one_run(args.connections, args.baseline))
        print("after: " if args.baseline else "", _one_run(args.connections, None), sep="")


if __name__ == "__main__":
    main()
