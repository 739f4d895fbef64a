#!/usr/bin/env bash
# bench_failover.sh ENTENTE [WORKDIR] [ROUNDS] [ROUND_S] [STEP_S]: goodput of a
# coalition under churn, on loopback under CurveZMQ. Two runs of the same
# 3-site coalition (a small model: 2 layers, width 64, context 64, one thread
# per process; rounds paced at ROUND_S seconds by coalition.round_seconds,
# default 2; ROUNDS rounds, default 48; every inner step lasting at least
# STEP_S seconds, default 0.05, by the ENTENTE_FAULT_STEP_S hook, so that
# each site trains at a speed of its own as on its own cluster, not faster
# when a killed site leaves it a core of the shared machine; STEP_S = 0:
# unpaced, as fast as the shared cores go):
#   steady  a coordinator and sites a, b, c; no failure
#   churn   a primary and a standby coordinator, and the same sites knowing
#           both endpoints; every 6 rounds (up to 12 before the end) one
#           site (a, b, c in turn) is killed with SIGKILL and started again
#           at once (--resume auto: its last checkpoint, every 20 steps),
#           and once, at round 18 instead, the primary is killed with
#           SIGKILL: the standby takes over
# and prints, for each run, the tokens merged (the final coordinator's
# tokens_total) per second of wall time from the sites' start to the
# coordinator's end, and their ratio (goodput; the issue's target is
# >= 90%); for the churn run, the time from each site's death to the
# coordinator's next merged round (the round in flight completing without
# it), from each restart to the site's first inner step back, and from the
# primary's death to the standby taking over and to its first merged round.
# Every process is stopped by its PID. Figures, never a pass or fail.
set -u
E=$(realpath "$1")
W=${2:-$(mktemp -d "${TMPDIR:-/tmp}/bench-failover.XXXXXX")}
ROUNDS=${3:-48}
ROUND_S=${4:-2}
STEP_S=${5:-0.05}
export ENTENTE_FAULT_STEP_S=$STEP_S
mkdir -p "$W" && cd "$W" || exit 1
PIDS=()
trap 'for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -9 "$p" 2>/dev/null; done' EXIT
now() { date +%s.%N; }
dt() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

"$E" keygen coordinator standby a b c --dir keys >/dev/null || exit 1
mkdir -p allow && cp keys/a.pub keys/b.pub keys/c.pub allow/
python3 -c 'import random; r = random.Random(1); w = "the quick brown fox jumps over a lazy dog while rain falls on hills".split()
print("\n".join(" ".join(r.choice(w) for _ in range(12)) for _ in range(20000)))' >corpus.txt
for s in a b c v; do "$E" data prepare --input corpus.txt --output "data-$s" >/dev/null || exit 1; done
cat >co.ini <<INI
[model]
layers = 2
heads = 2
width = 64
context = 64
[train]
batch_size = 8
lr = 1e-3
warmup_steps = 10
log_every = 100000
[eval]
every = 0
batches = 2
[sample]
tokens = 0
[checkpoint]
every = 20
[system]
threads = 1
[data]
dir = data-v
[coalition]
bind = tcp://127.0.0.1:*
sites = 3
rounds = $ROUNDS
inner_steps = 1000
round_seconds = $ROUND_S
eval_rounds = 0
timeout = 120
lost_after = 10
coordinator_key = $W/keys/coordinator.pub
allow = $W/allow
INI

# coordinator RUN_DIR [ARGS...]: started in the background (pid in CPID, endpoint in EP)
coordinator() {
    local dir=$1
    shift
    "$E" coordinator --config co.ini --run-dir "$dir" --set checkpoint.every=0 \
        --set coalition.key=keys/coordinator.key "$@" >>"$dir.log" 2>&1 &
    CPID=$!
    PIDS+=("$CPID")
    for _ in $(seq 600); do [ -s "$dir/endpoint" ] && break; sleep 0.1; done
    EP=$(cat "$dir/endpoint" 2>/dev/null)
    [ -n "$EP" ] || { echo "the coordinator in $dir did not start:"; tail -n 3 "$dir.log"; exit 1; }
}
# site RUN NAME [ARGS...]: pid in SITE_PID[NAME]
declare -A SITE_PID
site() {
    local run=$1 name=$2
    shift 2
    "$E" train --config co.ini --set "coalition.site=$name" --set "coalition.key=keys/$name.key" \
        --set "data.dir=data-$name" --run-dir "$run/site-$name" --resume auto "$@" \
        >>"$run/site-$name.log" 2>&1 &
    SITE_PID[$name]=$!
    PIDS+=($!)
}
# rounds_in METRICS: rounds merged so far (the last round record's round + 1)
rounds_in() {
    local r
    r=$(grep '"event":"round"' "$1" 2>/dev/null | tail -1 | sed -n 's/.*"round":\([0-9]*\),.*/\1/p')
    echo $((${r:--1} + 1))
}
# ended PID FILE: writes the time PID ends into FILE (a watcher in the background)
ended() {
    (while kill -0 "$1" 2>/dev/null; do sleep 0.05; done; now >"$2") &
    PIDS+=($!)
}
# tokens_total METRICS: the end record's tokens_total
tokens_total() { sed -n 's/.*"event":"end",.*"tokens_total":\([0-9]*\),.*/\1/p' "$1" | tail -1; }

# ---- steady: no failure ----
mkdir -p steady
coordinator steady/coordinator
ended "$CPID" steady/end_time
t0=$(now)
for s in a b c; do site steady "$s" --set "coalition.coordinator=$EP"; done
wait "$CPID"
sleep 0.2
t1=$(cat steady/end_time)
for s in a b c; do wait "${SITE_PID[$s]}"; done
steady_tokens=$(tokens_total steady/coordinator/metrics.jsonl)
steady_s=$(dt "$t0" "$t1")
echo "steady: $steady_tokens tokens merged in $steady_s s ($ROUNDS rounds of ${ROUND_S} s, inner steps of at least ${STEP_S} s)"

# ---- churn: site kills every 6 rounds, the primary once ----
mkdir -p churn
coordinator churn/standby --standby --set coalition.key=keys/standby.key \
    --set coalition.primary_key=keys/coordinator.pub
spid=$CPID seps=$EP
ended "$spid" churn/end_time
coordinator churn/primary --set "coalition.standby=$seps" --set coalition.standby_key=keys/standby.pub
ppid=$CPID peps=$EP
both=(--set "coalition.coordinator=$peps,$seps"
      --set "coalition.coordinator_key=$W/keys/coordinator.pub,$W/keys/standby.pub")
t0=$(now)
for s in a b c; do site churn "$s" "${both[@]}"; done
# the metrics of the coordinator in charge (the primary's until it dies)
cm=churn/primary/metrics.jsonl
primary_killed=0
deaths=() restarts=()
k=0
for r in $(seq 6 6 $((ROUNDS - 12))); do
    while [ "$(rounds_in "$cm")" -lt "$r" ] && kill -0 "$spid" 2>/dev/null; do sleep 0.05; done
    kill -0 "$spid" 2>/dev/null || break # the coalition is over
    if [ "$primary_killed" = 0 ] && [ "$r" -ge 18 ]; then
        kill -9 "$ppid"
        tk=$(now)
        primary_killed=1
        cm=churn/standby/metrics.jsonl
        for _ in $(seq 600); do grep -q "taking over" churn/standby.log && break; sleep 0.05; done
        tt=$(now)
        # its first round that merged sites (the round in flight at the
        # takeover is merged empty first)
        for _ in $(seq 1200); do grep -q '"event":"round",.*"sites":\["' "$cm" && break; sleep 0.05; done
        takeover_s=$(dt "$tk" "$tt")
        first_round_s=$(dt "$tk" "$(now)")
        echo "churn: primary killed after round $((r - 1)) was merged: the standby took over in $takeover_s s, merged its first round with the sites $first_round_s s after the kill"
        continue
    fi
    name=$(echo a b c | cut -d' ' -f$((k % 3 + 1)))
    k=$((k + 1))
    n0=$(rounds_in "$cm")
    starts0=$(grep -c '"event":"start"' "churn/site-$name/metrics.jsonl" 2>/dev/null)
    kill -9 "${SITE_PID[$name]}"
    tk=$(now)
    wait "${SITE_PID[$name]}" 2>/dev/null
    site churn "$name" "${both[@]}"
    tr=$(now)
    # its first inner step back (the first step record after the restarted
    # process's start record), watched in the background (the kills stay on schedule)
    (for _ in $(seq 2400); do
         if [ "$(awk -v s0="${starts0:-0}" '/"event":"start"/ { n++; k = 0; next }
                 /^\{"step":[0-9]*,"loss"/ { k++ } END { print (n > s0 && k > 0) }' \
                 "churn/site-$name/metrics.jsonl" 2>/dev/null)" = 1 ]; then
             echo "$name $(dt "$tr" "$(now)")" >>churn/restarts
             exit 0
         fi
         kill -0 "$spid" 2>/dev/null || { echo "$name none" >>churn/restarts; exit 0; }
         sleep 0.05
     done) &
    PIDS+=($!)
    for _ in $(seq 1200); do [ "$(rounds_in "$cm")" -gt "$n0" ] && break; sleep 0.02; done
    death=$(dt "$tk" "$(now)")
    deaths+=("$death")
    echo "churn: site $name killed after round $((n0 - 1)) was merged: the round in flight completed $death s later"
done
wait "$spid"
sleep 0.2
t1=$(cat churn/end_time)
wait "$ppid" 2>/dev/null
for s in a b c; do wait "${SITE_PID[$s]}"; done
churn_tokens=$(tokens_total churn/standby/metrics.jsonl)
[ -n "$churn_tokens" ] || churn_tokens=$(tokens_total churn/primary/metrics.jsonl)
churn_s=$(dt "$t0" "$t1")
echo "churn: $churn_tokens tokens merged in $churn_s s (${#deaths[@]} site kills, $primary_killed primary kill)"
sleep 0.3
while read -r name back; do
    if [ "$back" = none ]; then
        echo "churn: site $name, restarted, trained no step before the coalition ended"
    else
        restarts+=("$back")
        echo "churn: site $name, restarted: its first inner step $back s after the restart"
    fi
done <churn/restarts
grep -h '"event":"takeover"' churn/standby/metrics.jsonl
grep -h "joined round" churn/site-*.log | sed 's/^entente: /  /'

awk -v st="$steady_tokens" -v ss="$steady_s" -v ct="$churn_tokens" -v cs="$churn_s" \
    -v d="${deaths[*]}" -v b="${restarts[*]}" 'BEGIN {
    x = st / ss; y = ct / cs
    printf "tokens merged per second: steady %.0f, churn %.0f: goodput %.1f%% (target >= 90%%)\n", x, y, 100 * y / x
    n = split(d, dd, " "); s = 0; m = 0
    for (i = 1; i <= n; i++) { s += dd[i]; if (dd[i] > m) m = dd[i] }
    if (n) printf "site death -> the round in flight completing: mean %.2f s, max %.2f s (%d kills)\n", s / n, m, n
    n = split(b, bb, " "); s = 0; m = 0
    for (i = 1; i <= n; i++) { s += bb[i]; if (bb[i] > m) m = bb[i] }
    if (n) printf "site restart -> its first inner step: mean %.2f s, max %.2f s\n", s / n, m
}'
[ -n "${takeover_s:-}" ] && echo "primary death -> standby taking over: $takeover_s s; -> its first round merged: $first_round_s s"
