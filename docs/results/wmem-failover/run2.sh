#!/bin/bash
# The send-queue measurements of "A failover waits for the send queue"
# (docs/benchmarks.md) beside run.sh's: late-interface (aggregate mode) with
# the server's tcp_notsent_lowat or tcp_wmem maximum changed, and the
# aggregate scenario's goodput under each tcp_wmem maximum. Writes
# late-interface.jsonl and aggregate.jsonl in the directory it is run from
# (the emulator's seeds were dropped from the files: jq had rounded them).
set -u
braid=${BRAID:-braid}
run() { # scenario delays label sysctl(optional)
  local scenario=$1 delays=$2 label=$3; shift 3
  local extra=(); [ $# -gt 0 ] && extra=(--server-sysctl "$1")
  "$braid" --json lab run "$scenario" --pm braid --duration 6s --cc bbr --delay "$delays" "${extra[@]}" > r.json 2> err.txt \
    && jq -c --arg l "$label" --arg d "$delays" '.[0] | {scenario, delays:$d, server:$l, stall_ms:.metrics.stall_ms, recovery_ms:.metrics.recovery_ms, goodput_mbps:.metrics.goodput_mbps, aggregation_ratio:.metrics.aggregation_ratio, survived, bytes_corrupt, transport}' r.json \
    || jq -nc --arg l "$label" --arg e "$(tail -1 err.txt)" '{server:$l, error:$e}'
}
: > late-interface.jsonl; : > aggregate.jsonl
for i in 1 2 3; do
  run late-interface 10ms,40ms default >> late-interface.jsonl
  run late-interface 10ms,40ms notsent_lowat=131072 "net.ipv4.tcp_notsent_lowat=131072" >> late-interface.jsonl
  run late-interface 10ms,40ms wmem_max=1048576 "net.ipv4.tcp_wmem=4096 16384 1048576" >> late-interface.jsonl
  run late-interface 10ms,40ms wmem_max=524288 "net.ipv4.tcp_wmem=4096 16384 524288" >> late-interface.jsonl
done
for i in 1 2; do for d in 10ms,40ms 50ms,100ms; do
  run aggregate $d default >> aggregate.jsonl
  for m in 2097152 1048576 524288; do run aggregate $d wmem_max=$m "net.ipv4.tcp_wmem=4096 16384 $m" >> aggregate.jsonl; done
done; done
rm -f r.json err.txt
