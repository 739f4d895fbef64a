# slurm_lib.sh: real one-node Slurm clusters in temporary directories, for the
# Slurm tests (sourced by bash scripts, not run).
#
# A cluster lives in one directory DIR: its own munge key, munged and socket,
# slurm.conf (its cluster name, its own free ports for slurmctld and slurmd,
# its first job id), state, spool, temporary and log directories. Several
# clusters run side by side on one machine; a client command reaches one by
# its configuration, SLURM_CONF=DIR/slurm.conf, and a job submitted that way
# keeps it for the srun inside.
#
#   slurm_require                    exit 77 with the reason unless root with Slurm and munge
#   slurm_start DIR NAME [FIRST_ID]  start a cluster (its PIDs go to SLURM_PIDS); 1 on failure
#   slurm_stop                       cancel the clusters' jobs, stop every daemon started, by PID
#   slurm_logs DIR                   the last lines of a cluster's daemon logs
#   job_state ID, job_exit_code ID, wait_job ID SECONDS STATE...
#                                    a job of the cluster SLURM_CONF names
#   wait_for_file FILE SECONDS       until FILE exists and is not empty
#
# The caller defines fail MESSAGE... (report a failure and carry on) and
# stops the daemons (slurm_stop) on exit.

SLURM_PIDS=()
SLURM_DIRS=()

slurm_require() {
    local tool
    for tool in munged slurmctld slurmd sbatch scontrol scancel sinfo squeue srun; do
        if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
            echo "SKIP: $tool is not installed (launch/setup.sh installs slurm-wlm and munge)"
            exit 77
        fi
    done
    if [ "$(id -u)" != 0 ]; then
        echo "SKIP: slurmd must run as root to start jobs; run this test as root"
        exit 77
    fi
    PATH=$PATH:/usr/sbin
    export PATH
}

slurm_port_free() {
    ! grep -qi ":$(printf '%04X' "$1") " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# A free port P with P + 1 free as well, on stdout.
slurm_pick_ports() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 30000))
        if slurm_port_free "$p" && slurm_port_free $((p + 1)); then
            echo "$p"
            return 0
        fi
    done
    return 1
}

wait_for_file() {
    local t
    for t in $(seq $(($2 * 10))); do
        [ -s "$1" ] && return 0
        sleep 0.1
    done
    return 1
}

# slurm_start DIR NAME [FIRST_JOB_ID]: DIR must exist. The cluster is named
# entente-NAME; its job ids start at FIRST_JOB_ID (default 1), so that
# clusters running side by side give their jobs different ids (Open MPI and
# PMIx name some temporary files after the job id).
slurm_start() {
    local d=$1 name=$2 first=${3:-1} host port pid daemon state t
    mkdir -p "$d/munge" "$d/state" "$d/spool" "$d/log" "$d/tmp" || return 1
    chmod 755 "$d" "$d/munge"
    dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 2>/dev/null
    chmod 400 "$d/munge/munge.key"
    munged --socket="$d/munge/munge.socket" --key-file="$d/munge/munge.key" \
        --pid-file="$d/munge/munged.pid" --log-file="$d/log/munged.log" \
        --seed-file="$d/munge/munged.seed" --force || { echo "slurm $name: munged did not start"; return 1; }
    wait_for_file "$d/munge/munged.pid" 10 || { echo "slurm $name: munged wrote no PID file"; return 1; }
    SLURM_PIDS=("$(cat "$d/munge/munged.pid")" "${SLURM_PIDS[@]+"${SLURM_PIDS[@]}"}")

    host=$(hostname -s)
    port=$(slurm_pick_ports) || { echo "slurm $name: no free port pair"; return 1; }
    cat >"$d/slurm.conf" <<EOF
ClusterName=entente-$name
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$d/munge/munge.socket
CryptoType=crypto/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
FirstJobId=$first
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
TmpFS=$d/tmp
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
SlurmctldPort=$port
SlurmdPort=$((port + 1))
ReturnToService=2
JobCompType=jobcomp/filetxt
JobCompLoc=$d/log/jobcomp.txt
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    SLURM_DIRS+=("$d")
    for daemon in slurmctld slurmd; do
        if [ $daemon = slurmctld ]; then
            SLURM_CONF=$d/slurm.conf slurmctld -i
        else
            SLURM_CONF=$d/slurm.conf slurmd
        fi || { echo "slurm $name: $daemon did not start"; return 1; }
        wait_for_file "$d/$daemon.pid" 10 || { echo "slurm $name: $daemon wrote no PID file"; return 1; }
        pid=$(cat "$d/$daemon.pid")
        SLURM_PIDS=("$pid" "${SLURM_PIDS[@]}")
    done

    state=""
    for t in $(seq 200); do
        state=$(SLURM_CONF=$d/slurm.conf sinfo -h -o %T 2>/dev/null | head -1)
        [ "$state" = idle ] && break
        sleep 0.1
    done
    [ "$state" = idle ] || { echo "slurm $name: the node did not come up idle (state '$state')"; return 1; }
    echo "slurm: cluster entente-$name up on $host (ports $port-$((port + 1)), first job id $first)," \
         "daemons $(cat "$d/slurmd.pid") $(cat "$d/slurmctld.pid") $(cat "$d/munge/munged.pid")"
}

# Cancels the jobs still in each cluster (a job step outlives slurmd) and
# waits up to 15 s for them to end, then stops each daemon by its PID, the
# latest started first: SIGTERM, up to 15 s to exit, then SIGKILL.
slurm_stop() {
    local d pid t
    for d in "${SLURM_DIRS[@]+"${SLURM_DIRS[@]}"}"; do
        [ -n "$(SLURM_CONF=$d/slurm.conf squeue -h -o %i 2>/dev/null)" ] || continue
        SLURM_CONF=$d/slurm.conf scancel --user=root 2>/dev/null
        for t in $(seq 150); do
            [ -z "$(SLURM_CONF=$d/slurm.conf squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    done
    for pid in "${SLURM_PIDS[@]+"${SLURM_PIDS[@]}"}"; do
        kill "$pid" 2>/dev/null || continue
        for t in $(seq 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null
    done
    SLURM_PIDS=()
    SLURM_DIRS=()
}

slurm_logs() {
    local f
    for f in slurmctld slurmd; do
        echo "---- $f log of $1 (last 15 lines)"
        tail -15 "$1/log/$f.log" 2>/dev/null
    done
}

# job_state ID: COMPLETED, FAILED, PENDING, ...
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }

# job_exit_code ID: e.g. 0:0 (exit code:signal)
job_exit_code() { scontrol show job "$1" 2>/dev/null | sed -n 's/.* ExitCode=\([0-9:]*\).*/\1/p'; }

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
