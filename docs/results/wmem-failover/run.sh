#!/bin/bash
# failover-carrier download, aggregate (braid) and kernel alone, server tcp_wmem max default vs 1 MiB
out=/tmp/wm/runs.jsonl; : > $out
for i in 1 2 3; do for d in 10ms,40ms 50ms,100ms; do for pm in kernel braid; do for v in default 1048576; do
  if [ $v = default ]; then /tmp/sw/braid --json lab run failover-carrier --pm $pm --duration 6s --cc bbr --delay $d > /tmp/wm/r.json 2>/tmp/wm/err
  else /tmp/sw/braid --json lab run failover-carrier --pm $pm --duration 6s --cc bbr --delay $d --server-sysctl "net.ipv4.tcp_wmem=4096 16384 $v" > /tmp/wm/r.json 2>/tmp/wm/err; fi
  jq -c --arg v $v --arg d $d --arg pm $pm --arg i $i '.[0] | {run:$i, delays:$d, pm:$pm, server_wmem_max:$v, stall_ms:.metrics.stall_ms, recovery_ms:.metrics.recovery_ms, goodput_mbps:.metrics.goodput_mbps, survived, bytes_corrupt, transport, seed}' /tmp/wm/r.json >> $out || echo "{\"error\":\"$(tail -1 /tmp/wm/err)\"}" >> $out
done; done; done; done
echo done >> /tmp/wm/status
