#!/usr/bin/env bash
# slurm_test.sh ENTENTE_BINARY SOURCE_DIR: a real one-node Slurm cluster in a
# temporary directory runs the site template launch/slurm/site.sbatch.
#
#  1. munged (its own key and socket), slurmctld and slurmd start as root with
#     a configuration of their own (free ports, state and logs in the
#     temporary directory), and the node comes up idle;
#  2. the template, submitted with 2 tasks on a tiny configuration, ends
#     COMPLETED with exit code 0, and its metrics record 2 ranks and the job id;
#  3. a long job signalled as on preemption (SIGUSR1) stops after a step with
#     exit code 75, saves a checkpoint, is requeued by the template, and the
#     requeued job resumes from that checkpoint;
#  4. every daemon is stopped by its PID and the directory removed.
#
# Exit 0: passed; 1: failed; 77: skipped (not root, or Slurm not installed),
# with the reason on stdout.
set -u
E=$1
SRC=$2
case "$E" in /*) ;; *) E=$PWD/$E ;; esac

for tool in munged slurmctld slurmd sbatch scontrol scancel sinfo srun; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "SKIP: $tool is not installed (launch/setup.sh installs slurm-wlm and munge)"
        exit 77
    fi
done
if [ "$(id -u)" != 0 ]; then
    echo "SKIP: slurmd must run as root to start jobs; run this test as root"
    exit 77
fi
export PATH=$PATH:/usr/sbin

W=$(mktemp -d /tmp/entente-slurm.XXXXXX)
chmod 755 "$W"
FAILED=0
PIDS=()

fail() {
    echo "FAIL: $*"
    FAILED=1
}

# Stops each daemon by its PID: SIGTERM, up to 15 s to exit, then SIGKILL.
stop_daemons() {
    local pid t
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill "$pid" 2>/dev/null || continue
        for t in $(seq 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null
    done
}

cleanup() {
    stop_daemons
    if [ "$FAILED" != 0 ]; then
        echo "---- slurmctld log (last 15 lines)"
        tail -15 "$W/log/slurmctld.log" 2>/dev/null
        echo "---- slurmd log (last 15 lines)"
        tail -15 "$W/log/slurmd.log" 2>/dev/null
    fi
    rm -rf "$W"
}
trap cleanup EXIT

port_free() {
    ! grep -qi ":$(printf '%04X' "$1") " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

pick_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 30000))
        if port_free "$p" && port_free $((p + 1)); then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# wait_for_file FILE SECONDS
wait_for_file() {
    local t
    for t in $(seq $(($2 * 10))); do
        [ -s "$1" ] && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------------------
# 1. the cluster

mkdir -p "$W/munge" "$W/state" "$W/spool" "$W/log" "$W/work"
chmod 755 "$W/munge"
dd if=/dev/urandom of="$W/munge/munge.key" bs=1024 count=1 2>/dev/null
chmod 400 "$W/munge/munge.key"
munged --socket="$W/munge/munge.socket" --key-file="$W/munge/munge.key" \
    --pid-file="$W/munge/munged.pid" --log-file="$W/log/munged.log" \
    --seed-file="$W/munge/munged.seed" --force || { fail "munged did not start"; exit 1; }
wait_for_file "$W/munge/munged.pid" 10 && PIDS+=("$(cat "$W/munge/munged.pid")")

HOST=$(hostname -s)
PORT=$(pick_port) || { fail "no free port pair"; exit 1; }
cat >"$W/slurm.conf" <<EOF
ClusterName=entente-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$W/munge/munge.socket
CryptoType=crypto/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd.log
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
ReturnToService=2
JobCompType=jobcomp/filetxt
JobCompLoc=$W/log/jobcomp.txt
NodeName=$HOST CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$W/slurm.conf
slurmctld -i || { fail "slurmctld did not start"; exit 1; }
wait_for_file "$W/slurmctld.pid" 10 && PIDS=("$(cat "$W/slurmctld.pid")" "${PIDS[@]}")
slurmd || { fail "slurmd did not start"; exit 1; }
wait_for_file "$W/slurmd.pid" 10 && PIDS=("$(cat "$W/slurmd.pid")" "${PIDS[@]}")
[ ${#PIDS[@]} = 3 ] || { fail "a daemon wrote no PID file"; exit 1; }

state=""
for t in $(seq 200); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1)
    [ "$state" = idle ] && break
    sleep 0.1
done
[ "$state" = idle ] || { fail "the node did not come up idle (state '$state')"; exit 1; }
echo "slurm: cluster up on $HOST (ports $PORT-$((PORT + 1))), daemons ${PIDS[*]}"

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

# job_state ID: COMPLETED, FAILED, PENDING, ...
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }

# wait_job ID SECONDS STATE...: until the job is in one of the states
wait_job() {
    local id=$1 secs=$2 t s want
    shift 2
    for t in $(seq $((secs * 5))); do
        s=$(job_state "$id")
        for want in "$@"; do [ "$s" = "$want" ] && return 0; done
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------
# 2. a job that completes

id=$(ENTENTE="$E" ENTENTE_CONFIG=tiny.ini ENTENTE_RUN_DIR="$W/work/run" \
    sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 \
    "$SRC/launch/slurm/site.sbatch") || { fail "sbatch refused the template"; exit 1; }
if ! wait_job "$id" 120 COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY; then
    fail "job $id did not finish within 120 s (state $(job_state "$id"))"
fi
state=$(job_state "$id")
exitcode=$(scontrol show job "$id" | sed -n 's/.* ExitCode=\([0-9:]*\).*/\1/p')
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

cd /
if [ "$FAILED" = 0 ]; then
    echo "slurm: PASSED"
    exit 0
fi
exit 1
