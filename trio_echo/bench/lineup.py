"""The models the bench knows: the CLI's (``--model``), and the bench's own around the trio model.

* ``trio-bare``, the reference: a bare ``trio.serve_tcp`` handler (:mod:`.bare`);
* ``trio-w2``: the trio model with ``--workers 2`` (a supervisor and two worker processes);
* ``trio-nohub``: the trio model with ``--no-accelerator`` (no epoll readiness hub);
* ``trio-metrics``: the trio model with ``--metrics 127.0.0.1:0``, scraped by the bench during
  its measured runs (:mod:`.scrape`): what seeing inside a running server costs;
* ``trio@REV``, only with ``bench --baseline REV``: the trio model of an earlier revision
  (:mod:`.baseline`).

And each model's entry in the report, before its scenarios (:func:`model_entry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from trio_echo.bench import bare, csink
from trio_echo.bench.scenarios import Context
from trio_echo.bench.server import METRICS, NOHUB, VARIANTS, W2, WAUTO
from trio_echo.models import MODELS, Model

__all__ = [
    "BARE_MODEL",
    "C_SINK_MODEL",
    "METRICS_MODEL",
    "NOHUB_MODEL",
    "OPT_IN",
    "REFERENCES",
    "W2_MODEL",
    "bench_models",
    "model_entry",
    "with_baseline",
]

# The bare reference, as the bench sees it: a name, a summary, the flags it cannot honour.  It
# is no model of the CLI: the entry is only what ``python -m trio_echo.bench.bare`` runs
# (:func:`.server.server_command` starts it; the bench never calls ``load()``).
BARE_MODEL = Model(
    bare.BARE,
    bare.SUMMARY,
    "trio_echo.bench.bare:main",
    unsupported=bare.UNSUPPORTED,
)
# The C reference for raw streaming (issue 16): ``sink.c``, started by
# :func:`.server.server_command` like the bare reference.
C_SINK_MODEL = Model(
    csink.C_SINK, csink.SUMMARY, "trio_echo.bench.csink:build", unsupported=csink.UNSUPPORTED
)
# Why each reference cannot run a scenario, after "does not support --flag".
REFERENCES = {bare.BARE: bare.WHY_UNSUPPORTED, csink.C_SINK: csink.WHY_UNSUPPORTED}

# The trio model with two worker processes: the trio model (same entry, same flags supported),
# started as ``python -m trio_echo --model trio --workers 2`` (:func:`.server.server_command`).
W2_MODEL = attrs.evolve(
    MODELS[VARIANTS[W2].model],
    name=W2,
    summary="the trio model with --workers 2: a supervisor and 2 worker processes sharing the "
    "port (SO_REUSEPORT); figures are the whole process tree's, and it runs on every CPU, the "
    "load generator's included",
)

# The trio model with --workers auto: opt-in (``bench --models trio,trio-wauto``), not in the
# default lineup (:data:`OPT_IN`).
WAUTO_MODEL = attrs.evolve(
    MODELS[VARIANTS[WAUTO].model],
    name=WAUTO,
    summary="the trio model with --workers auto: one worker process per CPU the servers get "
    "(every CPU on a 2-core machine, the load generator's included)",
)
# Models the bench knows but runs only when named.
OPT_IN = frozenset({WAUTO})

# The trio model without its accelerator: ``python -m trio_echo --model trio --no-accelerator``.
NOHUB_MODEL = attrs.evolve(
    MODELS[VARIANTS[NOHUB].model],
    name=NOHUB,
    summary="the trio model with --no-accelerator: sockets read through Trio's own "
    "wait_readable, without the epoll readiness hub; --raw copied, not spliced; text tested "
    "with bytes.translate, not the C scan",
)

# The trio model with its metrics endpoint, watched: ``python -m trio_echo --model trio
# --metrics 127.0.0.1:0``, scraped every second of its measured runs (:mod:`.scrape`).
METRICS_MODEL = attrs.evolve(
    MODELS[VARIANTS[METRICS].model],
    name=METRICS,
    summary="the trio model with --metrics 127.0.0.1:0, scraped by the bench every second of "
    "its echo and streaming runs (a real Prometheus scrapes every 15-60 s): the counters kept "
    "and read",
)


def bench_models() -> dict[str, Model]:
    """Every model the bench knows, in report order: the CLI's, with the reference, the
    2-worker trio, the trio without accelerator and the watched trio right after trio."""
    found: dict[str, Model] = {}
    ours = (BARE_MODEL, W2_MODEL, WAUTO_MODEL, NOHUB_MODEL, METRICS_MODEL, C_SINK_MODEL)
    for name, model in MODELS.items():
        found[name] = model
        if name == "trio":
            found.update((m.name, m) for m in ours)
    for model in ours:
        found.setdefault(model.name, model)
    return found


def with_baseline(names: Sequence[str], baseline: str) -> list[str]:
    """The models to run, ``baseline`` (``trio@REV``) among them: where the list names it, or
    right after ``trio`` (first if there is no ``trio``)."""
    if baseline in names:
        return list(names)
    found = list(names)
    found.insert(found.index("trio") + 1 if "trio" in found else 0, baseline)
    return found


def model_entry(model: Model, context: Context | None = None) -> dict[str, Any]:
    """A model's entry in the report, before its scenarios: summary, reference or variant (the
    CLI's model and flags it runs, and the revision of a baseline), the CPUs its servers were
    pinned to, why not."""
    entry: dict[str, Any] = {"summary": model.summary, "scenarios": {}}
    if model.name in REFERENCES:
        entry["reference"] = True
    if (variant := VARIANTS.get(model.name)) is not None:
        entry["variant"] = {"model": variant.model, "flags": list(variant.flags)}
        if variant.revision is not None:
            entry["variant"]["revision"] = variant.revision
            entry["variant"]["source"] = str(variant.source)
    if context is not None:
        cpus = context.cpus_for(model)
        entry["cpus"] = None if cpus is None else list(cpus)
    why_not = model.available()
    if why_not is not None:
        entry["skipped"] = why_not
    return entry
