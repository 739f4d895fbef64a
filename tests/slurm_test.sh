#!/usr/bin/env bash
# slurm_test.sh ENTENTE_BINARY SOURCE_DIR: a real one-node Slurm cluster in a
# temporary directory runs the templates launch/slurm/site.sbatch and
# launch/slurm/coordinator.sbatch.
#
#  1. munged (its own key and socket), slurmctld and slurmd start as root with
#     a configuration of their own (free ports, state and logs in the
#     temporary directory), and the node comes up idle;
#  2. the template, submitted with 2 tasks on a tiny configuration, ends
#     COMPLETED with exit code 0, and its metrics record 2 ranks and the job id;
#  3. a long job signalled as on preemption (SIGUSR1) stops after a step with
#     exit code 75, saves a checkpoint, is requeued by the template, and the
#     requeued job resumes from that checkpoint;
#  4. launch/slurm/coordinator.sbatch runs a coordinator and site.sbatch a
#     coalition site that joins it: both jobs end COMPLETED with exit code
#     0, and the site ends with the coordinator's final anchor;
#  5. a coalition site job signalled as on preemption exits 75 and is not
#     requeued (a site cannot rejoin yet), and the coordinator job exits 1
#     naming it;
#  6. every daemon is stopped by its PID and the directory removed.
#
# Exit 0: passed; 1: failed; 77: skipped (not root, or Slurm not installed),
# with the reason on stdout.
set -u
E=$1
SRC=$2
case "$E" in /*) ;; *) E=$PWD/$E ;; esac

. "$(dirname "${BASH_SOURCE[0]}")/slurm_lib.sh"
slurm_require

W=$(mktemp -d /tmp/entente-slurm.XXXXXX)
FAILED=0

fail() {
    echo "FAIL: $*"
    FAILED=1
}

cleanup() {
    slurm_stop
    [ "$FAILED" != 0 ] && slurm_logs "$W"
    rm -rf "$W"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
# 1. the cluster

slurm_start "$W" test || { fail "the cluster did not start"; exit 1; }
export SLURM_CONF=$W/slurm.conf
mkdir "$W/work"

# ---------------------------------------------------------------------------
# test data and configuration

cd "$W/work"
for i in $(seq 1 3000); do echo "line $i: and the quick brown fox jumps over the lazy dog $((i * 7 % 13))"; done >corpus.txt
"$E" data prepare --input corpus.txt --output data >/dev/null || { fail "data prepare failed"; exit 1; }
cat >tiny.ini <<EOF
[model]
layers = 2
heads = 2
width = 32
context = 32
[train]
steps = 20
batch_size = 8
lr = 3e-3
warmup_steps = 5
[eval]
every = 10
batches = 2
[sample]
tokens = 16
[data]
dir = $W/work/data
EOF

# ---------------------------------------------------------------------------
# 2. a job that completes

id=$(ENTENTE="$E" ENTENTE_CONFIG=tiny.ini ENTENTE_RUN_DIR="$W/work/run" \
    sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 \
    "$SRC/launch/slurm/site.sbatch") || { fail "sbatch refused the template"; exit 1; }
if ! wait_job "$id" 120 COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY; then
    fail "job $id did not finish within 120 s (state $(job_state "$id"))"
fi
state=$(job_state "$id")
exitcode=$(job_exit_code "$id")
[ "$state" = COMPLETED ] || fail "job $id ended $state, expected COMPLETED"
[ "$exitcode" = 0:0 ] || fail "job $id exit code $exitcode, expected 0:0"
m=$W/work/run/metrics.jsonl
grep -q "^{\"event\":\"start\",\"world_size\":2,\"dp\":2,\"tp\":1,.*\"slurm_job_id\":\"$id\"" "$m" ||
    fail "metrics.jsonl does not record 2 ranks and job $id: $(head -1 "$m" 2>/dev/null)"
grep -q '"event":"end","step":20,"reason":"completed","replicas_identical":true' "$m" ||
    fail "metrics.jsonl has no completed end record"
[ "$(grep -c '"loss":' "$m")" = 20 ] || fail "expected 20 step records in metrics.jsonl"
grep -q "\"slurm_job_id\":\"$id\"" "$W/work/run/run.json" || fail "run.json does not record job $id"
grep -q "entente-site: job $id on 1 node(s)" "entente-$id.out" || fail "the job log lacks the template's banner"
if [ "$FAILED" != 0 ]; then
    echo "---- job log"
    cat "entente-$id.out"
fi
echo "slurm: job $id ($state, exit $exitcode): template run with 2 tasks checked"

# ---------------------------------------------------------------------------
# 3. preemption: SIGUSR1, exit code 75, requeue

id=$(ENTENTE="$E" ENTENTE_CONFIG=tiny.ini ENTENTE_RUN_DIR="$W/work/long" \
    ENTENTE_ARGS="--set train.steps=100000000 --set eval.every=0" \
    sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 \
    "$SRC/launch/slurm/site.sbatch") || { fail "sbatch refused the long job"; exit 1; }
reached=0
for t in $(seq 600); do
    grep -q '^{"step":3,' "$W/work/long/metrics.jsonl" 2>/dev/null && { reached=1; break; }
    sleep 0.1
done
if [ $reached = 1 ]; then
    scancel --signal=USR1 "$id"
    restarts=0
    for t in $(seq 300); do
        restarts=$(scontrol show job "$id" | sed -n 's/.* Restarts=\([0-9]*\).*/\1/p')
        [ "${restarts:-0}" -ge 1 ] && break
        sleep 0.1
    done
    [ "${restarts:-0}" -ge 1 ] || fail "job $id was not requeued after SIGUSR1 (state $(job_state "$id"))"
    grep -q '"event":"end","step":[0-9]*,"reason":"signal","replicas_identical":true' \
        "$W/work/long/metrics.jsonl" || fail "the signalled job has no end record with reason signal"
    grep -q "stopped by SIGUSR1 after step" "entente-$id.out" || fail "the job log does not say why it stopped"
    grep -q "requeueing job $id" "entente-$id.out" || fail "the template did not requeue job $id"
    stop=$(sed -n 's/.*"event":"end","step":\([0-9]*\),"reason":"signal".*/\1/p' "$W/work/long/metrics.jsonl" | head -1)
    [ -f "$W/work/long/checkpoints/$(printf 'step_%08d.h5' "${stop:-0}")" ] ||
        fail "the job stopped at step ${stop:-?} but saved no checkpoint of it"
    # the requeued job (same id, same run directory) resumes from that
    # checkpoint. Slurm holds a requeued job back for a while (BeginTime), so
    # that the first run's step has finished: wait for that (its PMIx socket
    # gone), then release the job at once
    for t in $(seq 300); do
        [ -e "$W/spool/stepd.slurm.pmix.$id.0" ] || break
        sleep 0.1
    done
    scontrol update JobId="$id" StartTime=now >/dev/null 2>&1
    resumed=0
    for t in $(seq 900); do
        grep -q "\"resumed_step\":$stop" "$W/work/long/metrics.jsonl" 2>/dev/null && { resumed=1; break; }
        sleep 0.1
    done
    [ $resumed = 1 ] || fail "the requeued job $id did not resume from step $stop (state $(job_state "$id"))"
    echo "slurm: job $id stopped by SIGUSR1 at step $stop, saved, requeued (restarts: ${restarts:-0}), resumed from step $stop"
else
    fail "job $id did not reach step 3 (state $(job_state "$id"))"
fi
scancel "$id" 2>/dev/null
wait_job "$id" 30 CANCELLED COMPLETED FAILED || fail "job $id was not cancelled"
if [ "$FAILED" != 0 ]; then
    echo "---- long job log"
    cat "entente-$id.out" 2>/dev/null | tail -20
fi

# ---------------------------------------------------------------------------
# 4. the coordinator's template: a coalition of one site, both jobs here

# coalition_jobs NAME ROUNDS: a coordinator job and a site job that joins it,
# run directories $W/work/NAME-coordinator and $W/work/NAME-site; sets cid,
# sid (their job ids) and ep (the coordinator's endpoint)
coalition_jobs() {
    local args="--set coalition.rounds=$2 --set coalition.inner_steps=5 --set coalition.timeout=60"
    cid=$(ENTENTE="$E" ENTENTE_CONFIG=tiny.ini ENTENTE_RUN_DIR="$W/work/$1-coordinator" \
        ENTENTE_BIND="tcp://127.0.0.1:*" ENTENTE_ARGS="$args" \
        ENTENTE_KEY="$W/work/keys/coordinator.key" ENTENTE_ALLOW="$W/work/keys/allow" \
        sbatch --parsable --cpus-per-task=1 "$SRC/launch/slurm/coordinator.sbatch") ||
        { fail "sbatch refused the coordinator's template"; exit 1; }
    wait_for_file "$W/work/$1-coordinator/endpoint" 60 ||
        { fail "coordinator job $cid wrote no endpoint (state $(job_state "$cid"))"; exit 1; }
    ep=$(head -1 "$W/work/$1-coordinator/endpoint")
    sid=$(ENTENTE="$E" ENTENTE_CONFIG=tiny.ini ENTENTE_RUN_DIR="$W/work/$1-site" ENTENTE_ARGS="$args" \
        ENTENTE_COORDINATOR="$ep" ENTENTE_SITE="$1" ENTENTE_KEY="$W/work/keys/$1.key" \
        ENTENTE_COORDINATOR_KEY="$W/work/keys/coordinator.pub" \
        sbatch --parsable --nodes=1 --ntasks-per-node=1 --cpus-per-task=1 "$SRC/launch/slurm/site.sbatch") ||
        { fail "sbatch refused the coalition site"; exit 1; }
}

# the templates' link runs secured: key pairs, the sites on the allowlist
"$E" keygen coordinator solo gone --dir "$W/work/keys" >/dev/null || { fail "entente keygen failed"; exit 1; }
mkdir -p "$W/work/keys/allow"
cp "$W/work/keys/solo.pub" "$W/work/keys/gone.pub" "$W/work/keys/allow/"

coalition_jobs solo 2
for id in "$cid" "$sid"; do
    wait_job "$id" 60 COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY ||
        fail "job $id did not finish within 60 s (state $(job_state "$id"))"
    [ "$(job_state "$id")" = COMPLETED ] || fail "job $id ended $(job_state "$id"), expected COMPLETED"
    [ "$(job_exit_code "$id")" = 0:0 ] || fail "job $id exit code $(job_exit_code "$id"), expected 0:0"
done
grep -q "entente-coordinator: job $cid on $(hostname -s),.* bind tcp://127.0.0.1:\*" "entente-coordinator-$cid.out" ||
    fail "the coordinator's job log lacks the template's banner"
grep -q "entente-site: job $sid on .*, coalition site solo, coordinator $ep" "entente-$sid.out" ||
    fail "the site's job log does not name its coalition"
want=$(sed -n 's/^{"event":"end",.*"anchor_hash":"\([0-9a-f]*\)".*/\1/p' "$W/work/solo-coordinator/metrics.jsonl")
got=$(sed -n 's/^{"event":"anchor","site":"solo",.*"anchor_hash":"\([0-9a-f]*\)".*/\1/p' "$W/work/solo-site/metrics.jsonl")
[ "$(grep -c '^{"event":"round"' "$W/work/solo-coordinator/metrics.jsonl")" = 2 ] ||
    fail "the coordinator did not record 2 rounds"
[ -n "$want" ] && [ "$want" = "$got" ] || fail "the site ends with anchor '$got', the coordinator with '$want'"
if [ "$FAILED" != 0 ]; then
    echo "---- coordinator job log"
    tail -20 "entente-coordinator-$cid.out" 2>/dev/null
    echo "---- site job log"
    tail -20 "entente-$sid.out" 2>/dev/null
fi
echo "slurm: coordinator job $cid and coalition site job $sid: 2 rounds, both end with anchor $want"

# ---------------------------------------------------------------------------
# 5. a coalition site stopped by a signal: exit code 75, not requeued (it
#    could not rejoin), and the coordinator gives up naming it

coalition_jobs gone 100000
reached=0
for t in $(seq 600); do
    grep -q '^{"event":"round"' "$W/work/gone-site/metrics.jsonl" 2>/dev/null && { reached=1; break; }
    sleep 0.1
done
[ $reached = 1 ] || fail "coalition site job $sid recorded no round (state $(job_state "$sid"))"
scancel --signal=USR1 "$sid"
for id in "$sid" "$cid"; do
    wait_job "$id" 60 COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY ||
        fail "job $id did not end within 60 s of the signal (state $(job_state "$id"))"
done
[ "$(job_exit_code "$sid")" = 75:0 ] || fail "the signalled site's exit code is $(job_exit_code "$sid"), expected 75:0"
restarts=$(scontrol show job "$sid" | sed -n 's/.* Restarts=\([0-9]*\).*/\1/p')
[ "${restarts:-x}" = 0 ] || fail "the signalled coalition site was requeued (restarts: ${restarts:-?})"
grep -q "a coalition site is not requeued" "entente-$sid.out" || fail "the site's job log does not say why it is not requeued"
[ "$(job_exit_code "$cid")" = 1:0 ] || fail "the coordinator's exit code is $(job_exit_code "$cid"), expected 1:0"
grep -q "site 'gone' .* left at round" "entente-coordinator-$cid.out" || fail "the coordinator's log does not name the site that left"
if [ "$FAILED" != 0 ]; then
    tail -5 "entente-$sid.out" "entente-coordinator-$cid.out" 2>/dev/null
fi
echo "slurm: coalition site job $sid stopped by SIGUSR1 (exit $(job_exit_code "$sid"), not requeued); coordinator job $cid exit $(job_exit_code "$cid")"

cd /
if [ "$FAILED" = 0 ]; then
    echo "slurm: PASSED"
    exit 0
fi
exit 1
