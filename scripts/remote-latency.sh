#!/usr/bin/env bash
# Latency of `shoal node ls` remotely (mutual TLS over TCP, a client certificate) against
# locally (the Unix socket), on a 3-manager swarm of release agents on 127.0.0.1. Each call is a
# new CLI process, so the remote figure includes a full TLS handshake. Prints one JSON line.
# Usage: cargo build --release -p shoal-agent && scripts/remote-latency.sh   (N=runs, default 50)
set -u
S=${SHOAL:-$(cd "$(dirname "$0")/.." && pwd)/target/release/shoal}
T=$(mktemp -d); cd $T; trap 'pkill -9 -f "shoal --data-dir $T"; rm -rf $T' EXIT
for i in 1 2 3; do
  $S --data-dir $T/node-$i agent --listen 127.0.0.1:1710$i --hostname node-$i --gossip local --api-addr 127.0.0.1:1810$i > $T/node-$i.log 2>&1 &
done
wait_for() { for _ in $(seq 300); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $1" >&2; exit 1; }
for i in 1 2 3; do wait_for "$S --data-dir $T/node-$i info"; done
$S --data-dir $T/node-1 swarm init >/dev/null
TOK=$($S --data-dir $T/node-1 swarm join-token -q manager)
for i in 2 3; do $S --data-dir $T/node-$i swarm join --token $TOK 127.0.0.1:17101 >/dev/null; done
wait_for "[ \$($S --data-dir $T/node-1 node ls | grep -c Ready) = 3 ]"
$S --data-dir $T/node-1 swarm ca client-cert --name alice --out ./alice >/dev/null
R="$S -H tcp://127.0.0.1:18101 --tls-dir ./alice"
$R node ls >/dev/null || { echo remote failed; exit 1; }
N=${N:-50}
for k in 1 2 3; do $R node ls >/dev/null; $S --data-dir $T/node-1 node ls > /dev/null; done
t0=$(date +%s%N); for k in $(seq $N); do $R node ls >/dev/null; done; t1=$(date +%s%N)
for k in $(seq $N); do $S --data-dir $T/node-1 node ls >/dev/null; done; t2=$(date +%s%N)
awk -v n=$N -v r=$((t1-t0)) -v l=$((t2-t1)) 'BEGIN { printf "{\"runs\": %d, \"remote_node_ls_mean_ms\": %.1f, \"local_node_ls_mean_ms\": %.1f}\n", n, r/n/1e6, l/n/1e6 }'
