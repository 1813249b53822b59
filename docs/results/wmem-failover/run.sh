#!/bin/bash
# runs.jsonl of "A failover waits for the send queue" (docs/benchmarks.md):
# failover-carrier, download, aggregate mode (braid) and the kernel alone,
# the server's tcp_wmem maximum at its default and at 1 MiB, three runs,
# interleaved; then three runs at 50/100 ms with 2 MiB. Writes runs.jsonl
# in the directory it is run from. (Run on 2026-11-29 with the same loops
# from /tmp; the emulator's seeds were dropped from the file: jq had
# rounded them.)
set -u
braid=${BRAID:-braid}
run() { # run delays pm max(default|bytes)
  local extra=(); [ "$4" != default ] && extra=(--server-sysctl "net.ipv4.tcp_wmem=4096 16384 $4")
  "$braid" --json lab run failover-carrier --pm "$3" --duration 6s --cc bbr --delay "$2" "${extra[@]}" > r.json 2> err.txt \
    && jq -c --arg v "$4" --arg d "$2" --arg pm "$3" --arg i "$1" '.[0] | {run:$i, delays:$d, pm:$pm, server_wmem_max:$v, stall_ms:.metrics.stall_ms, recovery_ms:.metrics.recovery_ms, goodput_mbps:.metrics.goodput_mbps, survived, bytes_corrupt, transport}' r.json \
    || jq -nc --arg e "$(tail -1 err.txt)" '{error:$e}'
}
: > runs.jsonl
for i in 1 2 3; do for d in 10ms,40ms 50ms,100ms; do for pm in kernel braid; do for v in default 1048576; do
  run $i $d $pm $v >> runs.jsonl
done; done; done; done
for i in 1 2 3; do run $i 50ms,100ms braid 2097152 >> runs.jsonl; done
rm -f r.json err.txt
