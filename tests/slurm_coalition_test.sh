#!/usr/bin/env bash
# slurm_coalition_test.sh ENTENTE_BINARY SOURCE_DIR: a coalition of two sites
# on two independent one-node Slurm clusters on this machine, north and
# south, with the coordinator as a plain process beside them.
#
#  1. two clusters start (tests/slurm_lib.sh): each its own munge key, munged
#     and socket, slurmctld and slurmd ports, state, spool and log
#     directories, cluster name and job ids;
#  2. each site has its own part of a corpus (its own data directory), the
#     coordinator a third for validation;
#  3. the coordinator starts (a loopback port of its choosing, read from its
#     RUN_DIR/endpoint) and waits for 2 sites;
#  4. launch/slurm/site.sbatch is submitted to each cluster as a coalition
#     site, with 2 tasks on north and 1 on south; the coordinator completes
#     its rounds and exits 0, both jobs end COMPLETED with exit code 0, each
#     in its own cluster (the other one does not know it), each run records
#     its job id, its ranks and its own data, and for every round each site's
#     anchor_hash equals the coordinator's;
#  5. the coordinator and every daemon are stopped by PID, the directory
#     removed.
#
# Exit 0: passed; 1: failed; 77: skipped (not root, or Slurm not installed),
# with the reason on stdout.
set -u
E=$1
SRC=$2
case "$E" in /*) ;; *) E=$PWD/$E ;; esac

. "$(dirname "${BASH_SOURCE[0]}")/slurm_lib.sh"
slurm_require

W=$(mktemp -d /tmp/entente-slurm2.XXXXXX)
chmod 755 "$W"
FAILED=0
SITES=(north south)
declare -A TASKS=([north]=2 [south]=1) FIRST_ID=([north]=1000 [south]=2000) JOB=()
ROUNDS=3
COORD_PID=
# the coalition's settings, the same for the coordinator and the sites
COALITION="--set coalition.sites=${#SITES[@]} --set coalition.rounds=$ROUNDS --set coalition.inner_steps=10"
COALITION+=" --set coalition.timeout=60 --set eval.batches=2 --set sample.tokens=16"

fail() {
    echo "FAIL: $*"
    FAILED=1
}

cleanup() {
    local s
    if [ -n "$COORD_PID" ] && kill -0 "$COORD_PID" 2>/dev/null; then
        kill "$COORD_PID"
        sleep 1
        kill -9 "$COORD_PID" 2>/dev/null
    fi
    slurm_stop
    if [ "$FAILED" != 0 ]; then
        echo "---- coordinator log (last 20 lines)"
        tail -20 "$W/work/coordinator.log" 2>/dev/null
        for s in "${SITES[@]}"; do
            slurm_logs "$W/$s"
            if [ -n "${JOB[$s]:-}" ]; then
                echo "---- job log of $s (last 20 lines)"
                tail -20 "$W/work/$s.out" 2>/dev/null
            fi
        done
    fi
    rm -rf "$W"
}
trap cleanup EXIT

# on CLUSTER COMMAND...: a Slurm client command on one cluster
on() {
    local c=$1
    shift
    SLURM_CONF=$W/$c/slurm.conf "$@"
}

# anchors METRICS KEY: "N HASH" for each record of METRICS with "KEY":N and
# an anchor_hash. A site records, as anchor_round, the coordinator's round
# after which its anchor holds (-1: the initial anchor, round r's record:
# the anchor of round r - 1, the updates being applied a round late; then
# one "anchor" record for the last round).
anchors() {
    local l n h
    grep -a "\"$2\":-\{0,1\}[0-9]" "$1" 2>/dev/null | while IFS= read -r l; do
        n=$(grep -o "\"$2\":-\{0,1\}[0-9]*" <<<"$l" | cut -d: -f2)
        h=$(grep -o '"anchor_hash":"[0-9a-f]*"' <<<"$l" | cut -d'"' -f4)
        [ -n "$h" ] && echo "$n $h"
    done
}

# ---------------------------------------------------------------------------
# 1. the clusters

for s in "${SITES[@]}"; do
    mkdir "$W/$s"
    slurm_start "$W/$s" "$s" "${FIRST_ID[$s]}" || { fail "cluster $s did not start"; exit 1; }
done
for s in "${SITES[@]}"; do
    name=$(on "$s" scontrol show config | sed -n 's/^ClusterName *= *//p')
    [ "$name" = "entente-$s" ] || fail "cluster $s answers as '$name'"
done

# ---------------------------------------------------------------------------
# 2. data: a part of the corpus for each site, one for the coordinator

mkdir "$W/work"
cd "$W/work"
for i in $(seq 1 3000); do echo "line $i: and the quick brown fox jumps over the lazy dog $((i * 7 % 13))"; done >corpus.txt
sed -n '1,1300p' corpus.txt >north.txt
sed -n '1301,2600p' corpus.txt >south.txt
sed -n '2601,3000p' corpus.txt >coordinator.txt
for s in "${SITES[@]}" coordinator; do
    "$E" data prepare --input "$s.txt" --output "data-$s" >/dev/null || { fail "data prepare for $s failed"; exit 1; }
done
# the link runs secured: key pairs, the sites' public keys on the allowlist
"$E" keygen coordinator "${SITES[@]}" --dir keys >/dev/null || { fail "entente keygen failed"; exit 1; }
mkdir keys/allow
for s in "${SITES[@]}"; do cp "keys/$s.pub" keys/allow/; done

# ---------------------------------------------------------------------------
# 3. the coordinator, a plain process on a loopback port of its choosing

# shellcheck disable=SC2086
"$E" coordinator --config "$SRC/configs/tiny.ini" --run-dir "$W/work/coordinator" $COALITION \
    --set "coalition.bind=tcp://127.0.0.1:*" --set "data.dir=$W/work/data-coordinator" \
    --set "coalition.key=$W/work/keys/coordinator.key" --set "coalition.allow=$W/work/keys/allow" \
    >coordinator.log 2>&1 &
COORD_PID=$!
wait_for_file "$W/work/coordinator/endpoint" 30 ||
    { fail "the coordinator wrote no endpoint within 30 s"; exit 1; }
EP=$(head -1 "$W/work/coordinator/endpoint")
case "$EP" in tcp://127.0.0.1:[0-9]*) ;; *) fail "the coordinator's endpoint is '$EP'"; exit 1 ;; esac
echo "slurm: coordinator (PID $COORD_PID) listens on $EP"

# ---------------------------------------------------------------------------
# 4. a coalition site on each cluster

for s in "${SITES[@]}"; do
    JOB[$s]=$(ENTENTE="$E" ENTENTE_CONFIG="$SRC/configs/tiny.ini" ENTENTE_RUN_DIR="$W/work/run-$s" \
        ENTENTE_COORDINATOR="$EP" ENTENTE_SITE="$s" ENTENTE_KEY="$W/work/keys/$s.key" \
        ENTENTE_COORDINATOR_KEY="$W/work/keys/coordinator.pub" \
        ENTENTE_ARGS="$COALITION --set data.dir=$W/work/data-$s" \
        on "$s" sbatch --parsable --job-name="entente-$s" --nodes=1 --ntasks-per-node="${TASKS[$s]}" \
        --cpus-per-task=1 --output="$W/work/$s.out" "$SRC/launch/slurm/site.sbatch") ||
        { fail "cluster $s refused the site job"; exit 1; }
    echo "slurm: site $s submitted as job ${JOB[$s]} on cluster entente-$s"
done

# the coordinator ends once the last round is done
for t in $(seq 1200); do
    kill -0 "$COORD_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$COORD_PID" 2>/dev/null; then
    fail "the coordinator still runs after 120 s"
else
    wait "$COORD_PID"
    rc=$?
    COORD_PID=
    [ "$rc" = 0 ] || fail "the coordinator exited with code $rc"
fi
cm=$W/work/coordinator/metrics.jsonl
# the coordinator's anchors: the initial one (its start record) and after each round
{
    grep -a '^{"event":"start"' "$cm" | grep -o '"anchor_hash":"[0-9a-f]*"' | cut -d'"' -f4 | sed 's/^/-1 /'
    anchors "$cm" round
} >coordinator.anchors
[ "$(cut -d' ' -f1 coordinator.anchors | tr '\n' ' ')" = "$(seq -s ' ' -1 $((ROUNDS - 1))) " ] ||
    fail "the coordinator's metrics.jsonl does not record the initial anchor and $ROUNDS rounds: $(tr '\n' ';' <coordinator.anchors)"
grep -Eqv '^-?[0-9]+ [0-9a-f]{16}$' coordinator.anchors && fail "an anchor_hash is not 16 hex digits"
[ "$(cut -d' ' -f2 coordinator.anchors | sort -u | wc -l)" = $((ROUNDS + 1)) ] ||
    fail "the anchor did not move every round: $(cut -d' ' -f2 coordinator.anchors | tr '\n' ' ')"
for s in "${SITES[@]}"; do
    [ "$(grep -a '^{"event":"round"' "$cm" | grep -c "\"sites\":\[[^]]*\"$s\"")" = "$ROUNDS" ] ||
        fail "site $s is not among the sites of every round the coordinator merged"
done
[ "$(grep -a '^{"event":"round"' "$cm" | grep -c '"val_loss":[0-9]')" = "$ROUNDS" ] ||
    fail "the coordinator did not evaluate the anchor on its validation data every round"
grep -aq '^{"event":"end"' "$cm" || fail "the coordinator's metrics.jsonl has no end record"
[ -e "$W/work/coordinator/checkpoints/latest" ] || fail "the coordinator saved no checkpoint of the anchor"
final=$(tail -1 coordinator.anchors | cut -d' ' -f2)
echo "slurm: coordinator: $ROUNDS rounds, anchors $(cut -d' ' -f2 coordinator.anchors | tr '\n' ' ')"

for s in "${SITES[@]}"; do
    id=${JOB[$s]}
    on "$s" wait_job "$id" 60 COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY ||
        fail "job $id of $s did not finish within 60 s of the coordinator (state $(on "$s" job_state "$id"))"
    state=$(on "$s" job_state "$id")
    exitcode=$(on "$s" job_exit_code "$id")
    [ "$state" = COMPLETED ] || fail "job $id of $s ended $state, expected COMPLETED"
    [ "$exitcode" = 0:0 ] || fail "job $id of $s: exit code $exitcode, expected 0:0"
    for o in "${SITES[@]}"; do
        [ "$o" = "$s" ] || [ -z "$(on "$o" job_state "$id")" ] || fail "cluster $o knows job $id of $s"
    done
    m=$W/work/run-$s/metrics.jsonl
    grep -aq "^{\"event\":\"start\",\"world_size\":${TASKS[$s]},.*\"slurm_job_id\":\"$id\"" "$m" ||
        fail "$s: metrics.jsonl does not record ${TASKS[$s]} rank(s) and job $id: $(head -1 "$m" 2>/dev/null)"
    grep -aq "data: $W/work/data-$s: train" "$W/work/$s.out" ||
        fail "$s: the job log does not show it training on its own data, data-$s"
    [ "$(grep -a '^{"event":"round"' "$m" | grep "\"site\":\"$s\"" | grep -c '"inner_steps":10,')" = "$ROUNDS" ] ||
        fail "$s: metrics.jsonl has not $ROUNDS round records of site $s with 10 inner steps"
    anchors "$m" anchor_round >"$s.anchors"
    cmp -s coordinator.anchors "$s.anchors" ||
        fail "$s: anchors differ from the coordinator's (round, coordinator, site): $(join -a1 -a2 coordinator.anchors "$s.anchors" | tr '\n' ';')"
    [ "$(grep -ac "site $s: rank [0-9]* holds anchor $final after round $((ROUNDS - 1))" "$W/work/$s.out")" = "${TASKS[$s]}" ] ||
        fail "$s: not all ${TASKS[$s]} rank(s) hold the coordinator's final anchor $final: $(grep -a 'holds anchor' "$W/work/$s.out")"
    echo "slurm: site $s: job $id ($state, exit $exitcode) on ${TASKS[$s]} task(s), the coordinator's anchor every round on every rank"
done

cd /
if [ "$FAILED" = 0 ]; then
    echo "slurm coalition: PASSED"
    exit 0
fi
exit 1
