#!/usr/bin/env bash
# slurm_coalition_test.sh ENTENTE_BINARY SOURCE_DIR: two independent one-node
# Slurm clusters on this machine, north and south, each run a site job;
# both jobs run at once and end COMPLETED.
#
#  1. two clusters start (tests/slurm_lib.sh): each its own munge key, munged
#     and socket, slurmctld and slurmd ports, state, spool and log
#     directories, cluster name and job ids;
#  2. each trains on its own part of a corpus (its own data directory);
#  3. launch/slurm/site.sbatch is submitted to each cluster, with 2 tasks on
#     north and 1 on south: both jobs end COMPLETED with exit code 0, each
#     in its own cluster (the other one does not know it), and each run
#     records its own job id and data;
#  4. every daemon is stopped by its PID and the directory removed.
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

fail() {
    echo "FAIL: $*"
    FAILED=1
}

cleanup() {
    local s
    slurm_stop
    if [ "$FAILED" != 0 ]; then
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
# 2. each site's data

mkdir "$W/work"
cd "$W/work"
for i in $(seq 1 3000); do echo "line $i: and the quick brown fox jumps over the lazy dog $((i * 7 % 13))"; done >corpus.txt
sed -n '1,1500p' corpus.txt >north.txt
sed -n '1501,3000p' corpus.txt >south.txt
for s in "${SITES[@]}"; do
    "$E" data prepare --input "$s.txt" --output "data-$s" >/dev/null || { fail "data prepare for $s failed"; exit 1; }
done

# ---------------------------------------------------------------------------
# 3. a site job on each cluster, both at once

for s in "${SITES[@]}"; do
    JOB[$s]=$(ENTENTE="$E" ENTENTE_CONFIG="$SRC/configs/tiny.ini" ENTENTE_RUN_DIR="$W/work/run-$s" \
        ENTENTE_ARGS="--set data.dir=$W/work/data-$s --set train.steps=20 --set eval.every=10 --set eval.batches=2 --set sample.tokens=16" \
        on "$s" sbatch --parsable --job-name="entente-$s" --nodes=1 --ntasks-per-node="${TASKS[$s]}" \
        --cpus-per-task=1 --output="$W/work/$s.out" "$SRC/launch/slurm/site.sbatch") ||
        { fail "cluster $s refused the site job"; exit 1; }
    echo "slurm: site $s submitted as job ${JOB[$s]} on cluster entente-$s"
done
for s in "${SITES[@]}"; do
    id=${JOB[$s]}
    on "$s" wait_job "$id" 120 COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY ||
        fail "job $id of $s did not finish within 120 s (state $(on "$s" job_state "$id"))"
    state=$(on "$s" job_state "$id")
    exitcode=$(on "$s" job_exit_code "$id")
    [ "$state" = COMPLETED ] || fail "job $id of $s ended $state, expected COMPLETED"
    [ "$exitcode" = 0:0 ] || fail "job $id of $s: exit code $exitcode, expected 0:0"
    for o in "${SITES[@]}"; do
        [ "$o" = "$s" ] || [ -z "$(on "$o" job_state "$id")" ] || fail "cluster $o knows job $id of $s"
    done
    m=$W/work/run-$s/metrics.jsonl
    grep -q "^{\"event\":\"start\",\"world_size\":${TASKS[$s]},.*\"slurm_job_id\":\"$id\"" "$m" ||
        fail "$s: metrics.jsonl does not record ${TASKS[$s]} rank(s) and job $id: $(head -1 "$m" 2>/dev/null)"
    grep -aq "data: $W/work/data-$s: train" "$W/work/$s.out" ||
        fail "$s: the job log does not show it training on its own data, data-$s"
    grep -q '"event":"end",.*"reason":"completed"' "$m" || fail "$s: metrics.jsonl has no completed end record"
    echo "slurm: site $s: job $id ($state, exit $exitcode) on ${TASKS[$s]} task(s)"
done

cd /
if [ "$FAILED" = 0 ]; then
    echo "slurm coalition: PASSED"
    exit 0
fi
exit 1
