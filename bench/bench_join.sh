#!/usr/bin/env bash
# bench_join.sh ENTENTE [WORKDIR]: how long a site takes to join a running
# coalition of GPT-2 small (124M parameters: 12 layers, 12 heads, width 768,
# vocab 50257) on loopback, under CurveZMQ: from its HELLO to its first inner
# step (WELCOME, the anchor as f32 chunks, its round plan, the parameters
# set). A coordinator and site a run 8 rounds of 2 inner steps; site x
# starts once round 1 is merged and prints
#   site x: joined round R: anchor received in X s, first inner step Y s after its HELLO
# One thread per process: three processes share the 2 cores this was
# measured on (with 2 OpenMP threads each, a GPT-2 small step of 64 tokens
# took 6-9 s and a merge 9-33 s; a HELLO during a merge is answered at once).
# Context 64 and batch 1 kept the three processes within about 16 GB (each
# site holds its model, AdamW state and the coalition's vectors; the
# coordinator, which now merges on a worker thread from decoded deltas,
# holds about 1 GB more: the next anchor and one decoded delta); the
# anchor's size does not depend on them beyond 0.7M of its 124M values.
# Every process is stopped by its PID.
set -u
E=$(realpath "$1")
W=${2:-$(mktemp -d "${TMPDIR:-/tmp}/bench-join.XXXXXX")}
mkdir -p "$W" && cd "$W" || exit 1
PIDS=()
trap 'for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -9 "$p" 2>/dev/null; done' EXIT
"$E" keygen coordinator a x --dir keys >/dev/null || exit 1
mkdir -p allow && cp keys/a.pub keys/x.pub allow/
python3 -c 'import random; r = random.Random(1); w = "the quick brown fox jumps over a lazy dog while rain falls on hills".split()
print("\n".join(" ".join(r.choice(w) for _ in range(12)) for _ in range(20000)))' >corpus.txt
for s in a x; do "$E" data prepare --input corpus.txt --output "data-$s" >/dev/null || exit 1; done
cat >co.ini <<INI
[model]
layers = 12
heads = 12
width = 768
context = 64
vocab = 50257
[train]
batch_size = 1
lr = 1e-4
warmup_steps = 1
log_every = 1
[eval]
every = 0
batches = 1
[sample]
tokens = 0
[data]
dir = data-a
[system]
threads = 1
[coalition]
bind = tcp://127.0.0.1:*
sites = 1
rounds = 8
inner_steps = 2
timeout = 600
coordinator_key = $W/keys/coordinator.pub
allow = $W/allow
INI
"$E" coordinator --config co.ini --run-dir run/coordinator --set coalition.key=keys/coordinator.key \
    >coordinator.log 2>&1 &
PIDS+=($!)
CPID=$!
for _ in $(seq 600); do [ -s run/coordinator/endpoint ] && break; sleep 0.1; done
EP=$(cat run/coordinator/endpoint 2>/dev/null)
[ -n "$EP" ] || { echo "the coordinator did not start:"; tail -n 3 coordinator.log; exit 1; }
site() {
    "$E" train --config co.ini --set "coalition.coordinator=$EP" --set "coalition.site=$1" \
        --set "coalition.key=keys/$1.key" --set "data.dir=data-$1" --run-dir "run/site-$1" \
        >"site-$1.log" 2>&1 &
    PIDS+=($!)
}
site a
for _ in $(seq 3000); do grep -q '"event":"round","round":1,' run/coordinator/metrics.jsonl 2>/dev/null && break; sleep 0.2; done
site x
wait "$CPID"
echo "coordinator exited with $?"
grep -h "anchor took\|joined round" coordinator.log site-x.log
