#!/bin/bash
# CPU seconds of each process of `python -m trio_echo --workers W` (the supervisor and each
# worker, separately) while the bench's load generator drives it for 4 s; used for the
# "All cores" section of docs/performance.md.
#
#   tools/workers_cpu.sh WORKERS echo|stream CONNECTIONS SIZE [server flags...]
#   e.g. tools/workers_cpu.sh 2 stream 4 4096 --format text
#        tools/workers_cpu.sh 2 echo 100 64 --echo --quiet
#
# Needs the load generator built once: python -m trio_echo bench --quick --models trio.
set -euo pipefail
W=$1 MODE=$2 C=$3 S=$4
shift 4
PY=${PYTHON:-python}
LG=$(ls -t "${XDG_CACHE_HOME:-$HOME/.cache}"/trio_echo/loadgen-* | head -1)
ERR=$(mktemp) OUT=$(mktemp)
trap 'rm -f "$ERR" "$OUT"' EXIT
"$PY" -m trio_echo --workers "$W" --port 0 --log-level notice "$@" >/dev/null 2>"$ERR" &
SERVER=$!
for _ in $(seq 200); do grep -q "listening on" "$ERR" && break; sleep 0.05; done
PORT=$(grep -o '127\.0\.0\.1:[0-9]*' "$ERR" | head -1 | cut -d: -f2)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
PIDS="$SERVER $(cat /proc/$SERVER/task/*/children 2>/dev/null || true)"
declare -A BEFORE
for p in $PIDS; do BEFORE[$p]=$(ticks "$p"); done
WARMUP=0
[ "$MODE" = echo ] && WARMUP=1
"$LG" "$MODE" -p "$PORT" -c "$C" -s "$S" -d 4 -t 30 -w "$WARMUP" >"$OUT"
HZ=$(getconf CLK_TCK)
for p in $PIDS; do
    role=worker; [ "$p" = "$SERVER" ] && role=$([ "$W" = 1 ] && echo server || echo supervisor)
    echo "$role pid $p: $(( ( $(ticks "$p") - ${BEFORE[$p]} ) * 100 / HZ / 4 ))% of a core"
done
tail -1 "$OUT" | "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read())
rate = d["bytes"] / d["elapsed"] / 1e6 if d["mode"] == "stream" else d["requests"] / d["elapsed"]
unit = "MB/s" if d["mode"] == "stream" else "requests/s"
load = d["cpu"] / d["elapsed"]
print(f"{rate:,.0f} {unit}; load generator {load:.2f} of a core")'
kill -TERM "$SERVER"
wait "$SERVER"
