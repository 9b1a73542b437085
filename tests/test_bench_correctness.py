"""The shutdown-correctness scenarios: the numbered lines and their count, the client, the
port check, real runs against the trio model, and the table rebuilt from a JSON report."""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_echo.bench.lineup import REFERENCES, bench_models
from trio_echo.bench.numbered import (
    EOF,
    LINE_BYTES,
    RESET,
    Client,
    Sent,
    numbered_line,
    tally,
)
from trio_echo.bench.report import render_correctness, render_table
from trio_echo.bench.runner import run_scenario
from trio_echo.bench.scenarios import Context, Sizes, scenarios_for
from trio_echo.bench.scenarios.correctness import VARIANTS, correctness, port_free

PEER = "[127.0.0.1:40312] "


def _line(client: int, number: int) -> str:
    return PEER + numbered_line(client, number)[:-1].decode()


# ---- the lines and their count ------------------------------------------------------------------


def test_a_numbered_line_has_its_length_its_names_and_a_checksum():
    line = numbered_line(7, 123)
    assert len(line) == LINE_BYTES
    assert line.startswith(b"c07 000123 ")
    assert line.endswith(b"\n")
    assert line != numbered_line(7, 124)
    with pytest.raises(ValueError, match="no numbered line"):
        numbered_line(100, 0)


def test_sent_counts_whole_lines_and_the_one_cut_in():
    assert Sent.from_bytes(3 * LINE_BYTES + 10, 2 * LINE_BYTES + 5) == Sent(3, 2, 4)
    assert Sent.from_bytes(3 * LINE_BYTES, 3 * LINE_BYTES) == Sent(3, 3, 3)


def test_tally_finds_the_lost_the_torn_the_twice_printed_and_the_corrupt():
    sent = [
        # Client 0: lines 0-4 whole, 0-2 before the signal.
        Sent.from_bytes(5 * LINE_BYTES, 3 * LINE_BYTES),
        # Client 1: lines 0-3 whole (all before the signal) and 10 bytes of line 4.
        Sent.from_bytes(4 * LINE_BYTES + 10, 4 * LINE_BYTES + 10),
    ]
    flipped = _line(1, 3)[:-1] + ("0" if _line(1, 3)[-1] != "0" else "1")
    printed = [
        _line(0, 0),
        _line(0, 2),
        _line(0, 2),  # printed twice
        _line(0, 3)[: len(PEER) + 30],  # torn: written whole, printed in part
        # 0/1 never printed (lost before the signal), 0/4 never printed (lost after it)
        _line(1, 0),
        _line(1, 2),
        _line(1, 1),  # out of order
        _line(1, 3),
        flipped,  # a wrong checksum: corrupt
        PEER + numbered_line(1, 4)[:10].decode(),  # what the client got in of line 4: correct
        PEER + "c0",  # too short to tell whose: torn
        PEER[:9],  # cut inside the address before the line: torn too
        PEER + "hello",  # no client sent that
        "no peer prefix at all",
        _line(0, 9),  # never sent: corrupt
    ]
    counts = tally(sent, printed)
    assert counts.lines_sent == 9
    assert counts.lines_sent_before_signal == 7
    assert counts.lines_printed == 6
    assert counts.lines_lost == 1
    assert counts.lines_lost_after_signal == 1
    assert counts.lines_torn == 3
    assert counts.lines_partial_printed == 1
    assert counts.lines_duplicated == 1
    assert counts.lines_out_of_order == 1
    assert counts.lines_corrupt == 4
    clean = tally(sent, [_line(0, n) for n in range(5)] + [_line(1, n) for n in range(4)])
    assert (clean.lines_lost, clean.lines_torn, clean.lines_corrupt) == (0, 0, 0)
    assert clean.lines_printed == 9


# ---- the client and the port -------------------------------------------------------------------


def _accept(listener: socket.socket) -> socket.socket:
    listener.settimeout(5)
    conn, _ = listener.accept()
    conn.settimeout(5)
    return conn


def _wait(client: Client, deadline: float = 5.0) -> None:
    end = time.monotonic() + deadline
    while not client.done and time.monotonic() < end:
        client.flush()
        client.on_readable()
        time.sleep(0.005)  # a poll with a deadline, not a synchronisation
    assert client.done


def test_the_client_writes_its_lines_shuts_its_side_and_sees_a_clean_close():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sock = socket.create_connection(listener.getsockname())
        sock.setblocking(False)
        client = Client(3, sock)
        with _accept(listener) as server:
            client.queue(2)
            client.flush()
            client.mark_signal()
            client.queue(3)
            client.stop()
            client.queue(10)  # a stopped client sends nothing more
            received = b""
            while chunk := server.recv(4096):  # ends at the client's SHUT_WR
                received += chunk
            assert received == b"".join(numbered_line(3, n) for n in range(3))
            assert client.shut_down
            assert not client.done
        _wait(client)
        assert client.outcome == EOF
        assert client.sent() == Sent(3, 2, 3)
        client.close()


def test_the_client_sees_a_reset():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sock = socket.create_connection(listener.getsockname())
        sock.setblocking(False)
        client = Client(0, sock)
        server = _accept(listener)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # an abortive close: RST
        _wait(client)
        assert client.outcome == RESET
        client.close()


def test_port_free_tells_a_listening_port_from_a_free_one():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert not port_free(port)
    listener.close()
    assert port_free(port)


# ---- registration and real runs -----------------------------------------------------------------


def test_the_variants_are_registered_right_after_the_article_and_refused_without_grace():
    scenarios = scenarios_for(Sizes.quick())
    keys = [s.key for s in scenarios]
    assert keys[:4] == ["article", *(f"correctness_{v.key}" for v in VARIANTS)]
    context = Context(binary=Path("/nonexistent"), sizes=Sizes.quick())
    skipped = run_scenario(bench_models()["trio-bare"], scenarios[1], context)
    assert skipped.skipped is not None
    assert "does not support --format, --grace" in skipped.skipped
    quick, full = Sizes.quick(), Sizes()
    for sizes in (quick, full):
        assert sizes.correctness_stall > sizes.correctness_grace + max(1.0, sizes.correctness_grace)
    assert quick.correctness_lead + quick.correctness_stall <= 2.0


# Small and quick: 6 clients, a third of a second of lines before the signal.
SIZES = attrs.evolve(Sizes.quick(), correctness_clients=6)
# A grace period long enough that a busy machine does not make the server miss it (the stalled
# variant keeps the quick one: its stall must outlast the grace period and the drain after it).
GRACE = 1.0
# Seconds after the signal until the stalled stdout is read again: the quick grace period (0.3 s)
# and the drain timeout after it (1 s), and time to spare on a busy machine.
STALL = 2.0


def _run(variant: str, model: str = "trio") -> dict[str, Any]:
    if variant == "stalled":
        sizes = attrs.evolve(SIZES, correctness_stall=STALL)
    else:
        sizes = attrs.evolve(SIZES, correctness_grace=GRACE)
    context = Context(binary=Path("/nonexistent"), sizes=sizes)
    chosen = next(v for v in VARIANTS if v.key == variant)
    result = correctness(chosen)(context, bench_models()[model])
    assert result.skipped is None, result.skipped
    return dict(result.figures)


def test_the_trio_model_keeps_every_line_of_a_graceful_shutdown():
    figures = _run("graceful")
    assert figures["lines_sent_before_signal"] > 0
    assert figures["lines_lost"] == 0
    assert figures["lines_torn"] == figures["lines_duplicated"] == figures["lines_corrupt"] == 0
    assert figures["lines_printed"] >= figures["lines_sent_before_signal"]
    assert figures["lines_read_not_printed"] == 0
    # The clients that finished within the grace period were served to their end.
    assert figures["finishers_shut_down"] == figures["finishers"] == 3
    assert figures["finishers_closed_eof"] == 3
    assert figures["exit_status"] == 0
    assert not figures["killed"]
    assert figures["port_free"] is True
    assert GRACE <= figures["exit_s"] < GRACE + 2


def test_the_trio_model_forced_exits_143_at_once_with_nothing_corrupt():
    figures = _run("forced")
    assert figures["exit_status"] == 128 + 15
    assert figures["second_signal_s"] < GRACE / 2
    assert figures["exit_s"] < GRACE  # before the grace period was over
    assert figures["lines_duplicated"] == figures["lines_corrupt"] == 0
    assert figures["port_free"] is True


def test_the_trio_model_with_a_stalled_stdout_drops_the_rest_and_exits_1():
    figures = _run("stalled")
    assert figures["stdout_unread_at_signal_bytes"] > 0
    assert figures["exit_status"] == 1
    assert figures["lines_lost"] > 0
    # Read, never printed: dropped after the drain timeout.
    assert figures["lines_read_not_printed"] > 0
    assert figures["lines_corrupt"] == figures["lines_duplicated"] == 0
    # It did not wait for the reader to come back.
    assert figures["exit_s"] < STALL
    assert figures["port_free"] is True


@pytest.mark.stress
@pytest.mark.parametrize("variant", [v.key for v in VARIANTS])
# Not the references (trio-bare, c-sink): they refuse the scenario's flags (FLAGS), and the
# bench skips them there.
@pytest.mark.parametrize("model", [n for n in bench_models() if n not in REFERENCES])
def test_every_model_runs_every_variant(model: str, variant: str):
    if (why := bench_models()[model].available()) is not None:
        pytest.skip(why)
    figures = _run(variant, model)
    assert figures["clients_connected"] == SIZES.correctness_clients
    assert figures["lines_duplicated"] == 0
    assert not figures["killed"]
    assert figures["port_free"] is True
    if variant == "graceful" and model != "sync":  # sync serves one client: the others wait
        assert figures["lines_lost"] == 0
        assert figures["exit_status"] == 0


# ---- the table ----------------------------------------------------------------------------------


def _figures(**changes: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "clients": 20,
        "line_bytes": 64,
        "lines_per_s_per_client": 100.0,
        "lead_s": 1.5,
        "grace_s": 1.0,
        "lines_sent_before_signal": 3000,
        "lines_lost": 0,
        "lines_lost_after_signal": 2,
        "lines_torn": 0,
        "lines_duplicated": 0,
        "lines_corrupt": 0,
        "clients_closed_eof": 20,
        "clients_reset": 0,
        "clients_unclosed": 0,
        "exit_s": 1.004,
        "exit_status": 0,
        "killed": False,
        "port_free": True,
    }
    return {**figures, **changes}


def _report() -> dict[str, Any]:
    return {
        "scenario_titles": {
            "correctness_graceful": "graceful (SIGTERM)",
            "correctness_stalled": "stalled stdout",
            "idle_memory": "memory",
        },
        "models": {
            "trio": {
                "scenarios": {
                    "correctness_graceful": _figures(lines_read_not_printed=0),
                    "correctness_stalled": _figures(
                        lines_lost=2861, exit_status=1, exit_s=2.01, port_free=False
                    ),
                    "idle_memory": {"kb_per_connection": 5.4},
                }
            },
            "sync": {
                "scenarios": {
                    "correctness_graceful": _figures(
                        lines_lost=2850, clients_closed_eof=1, clients_reset=19
                    ),
                    "correctness_stalled": _figures(killed=True, exit_status=None),
                    "idle_memory": {"kb_per_connection": 1.0},
                }
            },
            "trio-bare": {
                "scenarios": {
                    "correctness_graceful": {"skipped": "does not support --format, --grace"},
                    "idle_memory": {"kb_per_connection": 2.0},
                }
            },
        },
    }


def test_the_correctness_table_comes_first_a_row_per_model_and_variant():
    report = json.loads(json.dumps(_report()))  # what --from-json reads
    table = render_table(report)
    lines = table.splitlines()
    assert lines[0].startswith("What a shutdown keeps: 20 clients streaming numbered 64 B lines")
    assert "(100/s each), SIGTERM after 1.5 s, --grace 1;" in lines[0]
    header = next(line for line in lines if "sent<sig" in line)
    assert header.split() == [
        "model",
        "sent<sig",
        "lost",
        "lost>sig",
        "dropped",
        "torn",
        "dup/bad",
        "eof/reset/open",
        "exit",
        "s",
        "status",
        "port",
    ]
    trio_graceful = next(line for line in lines if line.startswith("graceful (SIGTERM)"))
    rows = [" ".join(line.split()) for line in lines]
    assert " ".join(trio_graceful.split()[2:]) == "trio 3000 0 2 0 0 0/0 20/0/0 1.00 0 free"
    # A report from before the server's summary was read: "?" where a figure is missing.
    assert "sync 3000 2850 2 ? 0 0/0 1/19/0 1.00 0 free" in rows
    stalled = [line for line in lines if "2861" in line]
    assert len(stalled) == 1
    assert stalled[0].split()[-3:] == ["2.01", "1", "BUSY"]
    assert any(line.split()[:2] == ["sync", "3000"] and "killed" in line for line in lines)
    assert "skipped [c1]" in table
    assert "[c1] trio-bare, graceful (SIGTERM): does not support --format, --grace" in table
    # The model without the stalled scenario in its entry: said, not left blank.
    assert "[c2] trio-bare, stalled stdout: not run" in table
    # The rest of the report is the usual table of a column per model, without these rows.
    main = lines[lines.index(next(line for line in lines if line.startswith("scenario"))) :]
    assert main[0].split() == ["scenario", "figure", "trio", "sync", "trio-bare"]
    assert not any("graceful" in line for line in main)


def test_a_report_without_the_scenarios_has_no_correctness_table():
    report = _report()
    for entry in report["models"].values():
        entry["scenarios"] = {k: v for k, v in entry["scenarios"].items() if k == "idle_memory"}
    assert render_correctness(report) == []
    assert render_table(report).splitlines()[0].split()[:2] == ["scenario", "figure"]


def test_a_report_of_only_the_correctness_scenarios_has_no_empty_table():
    report = _report()
    for entry in report["models"].values():
        del entry["scenarios"]["idle_memory"]
    table = render_table(report)
    assert table.startswith("What a shutdown keeps")
    assert not any(line.startswith("scenario") for line in table.splitlines())
    assert "CPU srv/load/other" not in table
