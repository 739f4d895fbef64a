#!/usr/bin/env bash
# bench_coalition.sh: the coalition's figures on one machine, with real
# processes: a coordinator and three sites (`entente train`), each site
# linked to the coordinator through its own tests/wan_proxy.
#
#   bench/bench_coalition.sh [--build DIR] [--out DIR] [PART ...]
#
# PART is one or more of (default: all three):
#   utilisation  3 sites, one slowed to a quarter of a core by a cgroup CPU
#                quota (cpu.cfs_quota_us 25000 of 100000; the others run
#                unthrottled, one thread each), every link 100 Mbit/s and 50
#                ms one way; rounds planned to coalition.round_seconds.
#                Prints each site's compute utilisation (time in inner steps
#                / wall time, rounds 1.. and all rounds), speed and plans.
#   bytes        bytes each site sent per round (measured, int8 from the
#                utilisation run when it ran, int4 and topk from short runs)
#                beside what a ring all-reduce of fp32 gradients among the 3
#                sites sends for the same steps: 2 (p-1)/p x 4 bytes x
#                parameters per step, at the run's inner steps and at the
#                default (coalition.inner_steps = 800).
#   quality      validation loss at equal tokens: one site on all the data
#                with batch 48 (lr 3e-3) vs 3 sites of batch 16 on a third
#                each, the same 600 steps, as configs/coalition.ini trains:
#                rounds of H inner steps that wait for their merge, plain
#                averaging, a site lr of sqrt(3) x 3e-3; int8, int4 and topk
#                at H = 4 and at H = 8, then int8 at H = 50 (the cost of
#                fewer rounds); the same 960 validation sequences for every
#                model.
#
# Figures only; never passes or fails on them. Needs root for the cgroup
# (utilisation says so and is skipped without it). Takes about an hour on
# 2 cores; run it on a quiet machine.
set -u
export LC_ALL=C OMP_NUM_THREADS=1
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$SRC/build
OUT=
PARTS=()
while [ $# -gt 0 ]; do
    case $1 in
    --build) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,27s/^# \{0,1\}//p' "$0"; exit 0 ;;
    utilisation|bytes|quality) PARTS+=("$1"); shift ;;
    *) echo "bench_coalition: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#PARTS[@]} -gt 0 ] || PARTS=(utilisation bytes quality)
E=$BUILD/entente
PROXY=$BUILD/tests/wan_proxy
for f in "$E" "$PROXY"; do
    [ -x "$f" ] || { echo "bench_coalition: $f is missing: build first (launch/build.sh)" >&2; exit 2; }
done
[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/tmp}/entente-bench-coalition.XXXXXX")
mkdir -p "$OUT"
PIDS=()
CGROUP=
cleanup() {
    local p
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -9 "$p" 2>/dev/null; done
    [ -n "$CGROUP" ] && rmdir "$CGROUP" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "bench_coalition: $*"; }

# ---------------------------------------------------------------------------
# data: the King James Bible as data/kjv prepares it, its training tokens cut
# into three contiguous parts (one per site); every model is evaluated on its
# validation shard

make_data() {
    D=$OUT/data
    [ -f "$D/site-2/train_000000.bin" ] && return 0
    mkdir -p "$D"
    if ! command -v bible >/dev/null; then
        echo "bench_coalition: the bible-kjv package is missing (launch/setup.sh installs it)" >&2
        exit 2
    fi
    bible -l0 "Gen1:1-Rev22:21" >"$D/kjv.txt"
    "$E" data prepare --input "$D/kjv.txt" --output "$D/all" >/dev/null || exit 1
    # the training text cut into 3 contiguous parts at line ends, as
    # launch/coalition.sh does; no part holds validation text
    python3 "$SRC/launch/coalition_tool.py" split "$D/all" "$D/part-0.txt" "$D/part-1.txt" \
        "$D/part-2.txt" || exit 1
    local i
    for i in 0 1 2; do
        "$E" data prepare --input "$D/part-$i.txt" --output "$D/site-$i" --val-fraction 0 \
            >/dev/null || exit 1
    done
}

# ---------------------------------------------------------------------------
# one coalition: coordinator + 3 sites, each through its own proxy

# coalition NAME PROXY_ARGS SLOW SETS...: runs it in $OUT/NAME; SLOW is the
# index of the site to throttle (-1: none)
coalition() {
    local name=$1 proxy_args=$2 slow=$3
    shift 3
    local R=$OUT/$name
    rm -rf "$R"
    mkdir -p "$R"
    local common=(--config "$SRC/configs/demo.ini" --set "data.dir=$D/all"
                  --set coalition.sites=3 --set eval.every=0 --set sample.tokens=0 "$@")
    # secured as a real coalition is (CurveZMQ costs are in the figures)
    "$E" keygen coordinator s0 s1 s2 --dir "$R/keys" >/dev/null || { say "$name: keygen failed"; return 1; }
    mkdir -p "$R/keys/allow"
    cp "$R"/keys/s[012].pub "$R/keys/allow/"
    "$E" coordinator "${common[@]}" --set 'coalition.bind=tcp://127.0.0.1:*' \
        --set "coalition.key=$R/keys/coordinator.key" --set "coalition.allow=$R/keys/allow" \
        --run-dir "$R/coordinator" >"$R/coordinator.log" 2>&1 &
    local cpid=$!
    PIDS+=("$cpid")
    local t
    for t in $(seq 300); do [ -s "$R/coordinator/endpoint" ] && break; sleep 0.1; done
    local ep port
    ep=$(cat "$R/coordinator/endpoint") || { say "$name: the coordinator did not start"; return 1; }
    port=${ep##*:}
    local i spids=()
    for i in 0 1 2; do
        # shellcheck disable=SC2086
        "$PROXY" --listen 127.0.0.1:0 --connect "127.0.0.1:$port" $proxy_args \
            --port-file "$R/proxy-$i.port" >"$R/proxy-$i.log" 2>&1 &
        PIDS+=($!)
        for t in $(seq 100); do [ -s "$R/proxy-$i.port" ] && break; sleep 0.05; done
        local cmd=("$E" train "${common[@]}" --set "coalition.site=s$i"
                   --set "coalition.coordinator=tcp://127.0.0.1:$(cat "$R/proxy-$i.port")"
                   --set "coalition.key=$R/keys/s$i.key"
                   --set "coalition.coordinator_key=$R/keys/coordinator.pub"
                   --set "data.dir=$D/site-$i" --run-dir "$R/site-s$i")
        if [ "$i" = "$slow" ]; then
            bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CGROUP" "${cmd[@]}" \
                >"$R/site-s$i.log" 2>&1 &
        else
            "${cmd[@]}" >"$R/site-s$i.log" 2>&1 &
        fi
        spids+=($!)
        PIDS+=($!)
    done
    local rc=0
    wait "$cpid" || { say "$name: the coordinator failed:"; tail -3 "$R/coordinator.log"; rc=1; }
    for i in 0 1 2; do
        wait "${spids[$i]}" || { say "$name: site s$i failed:"; tail -3 "$R/site-s$i.log"; rc=1; }
    done
    return $rc
}

# field FILE KEY: KEY's values in FILE's round records
field() {
    grep '"event":"round"' "$1" | sed -n "s/.*\"$2\":\\([^,}]*\\).*/\\1/p"
}

params_of() {
    sed -n 's/.*"event":"start".*"parameters":\([0-9]*\).*/\1/p' "$1/coordinator/metrics.jsonl"
}

# ---------------------------------------------------------------------------

part_utilisation() {
    say "utilisation: 3 sites through 100 Mbit/s, 50 ms links; site s2 on a quarter of a core"
    if [ "$(id -u)" != 0 ] || [ ! -w /sys/fs/cgroup/cpu ]; then
        say "utilisation: SKIPPED: the cgroup v1 cpu controller is not writable (run as root)"
        return
    fi
    CGROUP=/sys/fs/cgroup/cpu/entente-bench-$$
    mkdir -p "$CGROUP" && echo 100000 >"$CGROUP/cpu.cfs_period_us" &&
        echo 25000 >"$CGROUP/cpu.cfs_quota_us" || { say "cannot set up $CGROUP"; return; }
    coalition utilisation "--latency-ms 50 --rate-mbit 100" 2 \
        --set coalition.rounds=8 --set coalition.round_seconds=20 \
        --set coalition.inner_steps=2000 --set train.batch_size=16 --set train.warmup_steps=20 || return
    rmdir "$CGROUP" 2>/dev/null && CGROUP=
    local R=$OUT/utilisation i
    printf '%-6s %-22s %10s %10s %10s %12s %12s\n' site "inner steps per round" "steps/s" \
        "wait s" "util 1.." "util all"
    for i in 0 1 2; do
        local m=$R/site-s$i/metrics.jsonl
        paste -d' ' <(field "$m" inner_steps) <(field "$m" compute_s) <(field "$m" wait_s) \
            <(field "$m" wall_s) <(field "$m" elapsed_s) | awk -v s="s$i" '
            { h[NR] = $1; c[NR] = $2; w[NR] = $3; wall[NR] = $4; e[NR] = $5 }
            END {
                plans = ""; for (k = 1; k <= NR; k++) plans = plans (k > 1 ? "," : "") h[k]
                start1 = e[1]; start0 = e[1] - wall[1]
                for (k = 2; k <= NR; k++) { c1 += c[k]; st += h[k]; wt += w[k] }
                for (k = 1; k <= NR; k++) c0 += c[k]
                printf "%-6s %-22s %10.2f %10.2f %9.1f%% %11.1f%%\n", s, plans, st / c1, wt,
                       100 * c1 / (e[NR] - start1), 100 * c0 / (e[NR] - start0)
            }'
    done
    say "utilisation: util = time in inner steps / wall time from the round's start to the end"
    say "of the last round (\"1..\": from round 1 on, once plans come from measured speeds)."
}

part_bytes() {
    local n
    say "bytes: what a site sends per round vs a ring all-reduce of fp32 gradients among 3 sites"
    printf '%-6s %14s %12s %16s %10s %16s %10s\n' codec "bytes/round" "inner steps" "all-reduce" "ratio" \
        "at H=800" "ratio"
    local codec
    for codec in int8 int4 topk; do
        local R=$OUT/bytes-$codec
        if [ "$codec" = int8 ] && [ -f "$OUT/utilisation/site-s0/metrics.jsonl" ]; then
            R=$OUT/utilisation
        else
            coalition "bytes-$codec" "" -1 --set coalition.rounds=3 --set coalition.inner_steps=20 \
                --set "coalition.codec=$codec" --set train.batch_size=8 \
                --set train.warmup_steps=5 || continue
        fi
        n=$(params_of "$R")
        paste -d' ' <(field "$R/site-s0/metrics.jsonl" bytes_sent) \
            <(field "$R/site-s0/metrics.jsonl" inner_steps) | awk -v c="$codec" -v n="$n" '
            NR > 1 { b += $1; h += $2; k++ }
            END {
                b /= k; h /= k; ring = 2 * 2 / 3 * 4 * n
                printf "%-6s %14.0f %12.0f %16.0f %9.0fx %16.0f %9.0fx\n", c, b, h, h * ring,
                       h * ring / b, 800 * ring, 800 * ring / b
            }'
    done
    say "bytes: rounds 1.. of site s0 (a round's heartbeats included); $n parameters"
}

# final_val DIR: the validation loss of a checkpoint on the 960 shared sequences
final_val() {
    "$E" eval --checkpoint "$1" --data "$D/all" --batches "$2" | sed -n 's/^val loss \([0-9.]*\).*/\1/p'
}

part_quality() {
    local steps=600
    say "quality: one site, batch 48, $steps steps on all the data, vs 3 sites of batch 16 on a"
    say "third each, $steps steps in rounds of H inner steps: equal tokens; validation on 960 sequences"
    local S=$OUT/sync
    if [ ! -f "$S/metrics.jsonl" ] || ! grep -q '"event":"end"' "$S/metrics.jsonl"; then
        rm -rf "$S"
        OMP_NUM_THREADS=2 "$E" train --config "$SRC/configs/demo.ini" --set "data.dir=$D/all" \
            --set train.batch_size=48 --set train.steps=$steps --set train.warmup_steps=43 \
            --set eval.every=0 --set sample.tokens=0 --run-dir "$S" >"$OUT/sync.log" 2>&1 ||
            { say "the synchronous run failed"; tail -3 "$OUT/sync.log"; return; }
    fi
    local base
    base=$(final_val "$S/checkpoints/latest" 20)
    printf '%-22s %10s %12s\n' run "val loss" "vs sync"
    printf '%-22s %10s %12s\n' "sync, batch 48" "$base" "-"
    local run codec h
    for run in int8:4 int4:4 topk:4 int8:8 int4:8 topk:8 int8:50; do
        codec=${run%:*} h=${run#*:}
        coalition "quality-$codec-h$h" "" -1 --set coalition.rounds=$((steps / h)) \
            --set coalition.inner_steps=$h --set coalition.overlap=false \
            --set coalition.outer_lr=1 --set coalition.outer_momentum=0 --set train.lr=5.2e-3 \
            --set "coalition.codec=$codec" --set train.batch_size=16 \
            --set coalition.eval_rounds=$((steps / h)) --set train.warmup_steps=43 || continue
        local v
        v=$(final_val "$OUT/quality-$codec-h$h/coordinator/checkpoints/latest" 60)
        awk -v c="$codec, H=$h" -v v="$v" -v b="$base" \
            'BEGIN { printf "%-22s %10s %+11.2f%%\n", "coalition, " c, v, 100 * (v - b) / b }'
    done
}

make_data
say "output in $OUT; $(getconf _NPROCESSORS_ONLN) cores; $(uname -r)"
for part in "${PARTS[@]}"; do "part_$part"; done
