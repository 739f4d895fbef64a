#!/usr/bin/env bash
# A local coalition on one machine: a coordinator and N sites (each its own
# mpirun; the first with 2 ranks) co-train configs/coalition.ini, each site on
# its own part of the default corpus's training tokens, and the
# coordinator evaluates the shared anchor on the corpus's validation shards.
# Then a sample from the anchor and RUN/loss.png. Run `launch/coalition.sh --help`.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: launch/coalition.sh [--sites N] [--split contiguous|striped]
                           [--set SECTION.KEY=VALUE ...]
       launch/coalition.sh --plot RUN_DIR

Runs a local coalition of configs/coalition.ini: a coordinator and N sites
(default 3, at most 8), each site its own mpirun, site a with 2 ranks and the
others with 1. The training tokens of data/kjv (the default corpus, prepared
the first time) are cut into N disjoint parts (--split), one per site, each
prepared into data/coalition-N/site-NAME; the coordinator evaluates the
anchor on data/kjv's validation shards, which no site trains on. Sites are
named a, b, c, ...; each output line starts with [coordinator] or [site NAME].

The run goes to runs/coalition-DATE-TIME/: coordinator/ and site-NAME/ (the
run directories: config, metrics.jsonl, checkpoints), one .log per process,
and at the end sample.txt (generated from the coordinator's final checkpoint)
and loss.png (each site's training loss and the coalition's validation loss
against time and against tokens; needs gnuplot).

Options:
  --sites N       number of sites, 1 to 8 (default 3)
  --split MODE    contiguous (default): each site one contiguous part of the
                  text, so the sites hold different books, as institutions
                  hold different data; striped: pieces of about 64 KiB dealt
                  out in turn, so every site draws from the whole text
                  (data/coalition-N-striped/site-NAME)
  --set S.K=V     a configuration override for the coordinator and every site
                  (repeatable), after the script's own (coalition.sites,
                  coalition.bind; per site coalition.coordinator,
                  coalition.site, coalition.key, coalition.coordinator_key,
                  data.dir and sample.tokens=0: a site ends
                  as the anchor, whose sample the script prints), e.g.
                  --set coalition.rounds=3
  --plot RUN_DIR  only draw RUN_DIR/loss.png from that run's metrics, and exit
  -h, --help      this help

Each rank gets OMP_NUM_THREADS threads: as given, or else the machine's cores
divided by the sites' ranks (at least 1). Ctrl-C, or a process that fails,
stops every process the script started (SIGTERM, which saves a checkpoint;
SIGKILL 30 s later). Needs build/entente (launch/build.sh), mpirun and
python3 (launch/setup.sh).
Exit codes: 0 done, 1 a process failed, 2 usage, 130 interrupted.
EOF
}

die_usage() {
    echo "coalition: error: $*" >&2
    echo "coalition: see launch/coalition.sh --help" >&2
    exit 2
}

die() {
    echo "coalition: error: $*" >&2
    exit 1
}

say() {
    echo "coalition: $*"
}

# ---------------------------------------------------------------------------
# arguments (paths given relative to the caller's directory are resolved
# before the script moves to the repository root)

max_sites=8
site_names=(a b c d e f g h)
sites=3
split=contiguous
sets=()
plot_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --sites | --split | --set | --plot)
        [ $# -ge 2 ] || die_usage "$1 needs a value"
        opt=$1 val=$2
        shift 2
        ;;
    --sites=* | --split=* | --set=* | --plot=*)
        opt=${1%%=*} val=${1#*=}
        shift
        ;;
    *)
        die_usage "unknown argument '$1'"
        ;;
    esac
    case "$opt" in
    --sites)
        if ! [[ "$val" =~ ^[0-9]+$ ]] || [ "${#val}" -gt 3 ] || [ "$val" -lt 1 ] ||
            [ "$val" -gt $max_sites ]; then
            die_usage "--sites '$val': the number of sites must be an integer from 1 to $max_sites"
        fi
        sites=$((10#$val))
        ;;
    --split)
        case "$val" in
        contiguous | striped) split=$val ;;
        *) die_usage "--split '$val': expected contiguous or striped" ;;
        esac
        ;;
    --set)
        [[ "$val" =~ ^[A-Za-z0-9_]+\.[A-Za-z0-9_]+= ]] ||
            die_usage "--set '$val': expected SECTION.KEY=VALUE, e.g. --set coalition.rounds=3"
        sets+=(--set "$val")
        ;;
    --plot)
        [ -d "$val" ] || die_usage "--plot '$val': no such run directory"
        plot_dir=$(cd "$val" && pwd)
        ;;
    esac
done

cd "$(dirname "$0")/.."
root=$PWD
tool=(python3 "$root/launch/coalition_tool.py")

# ---------------------------------------------------------------------------
# loss.png

# plot_run RUN_DIR: draws RUN_DIR/loss.png from RUN_DIR/site-*/metrics.jsonl
# (training loss per step) and RUN_DIR/coordinator/metrics.jsonl (validation
# loss per round). Without gnuplot it says so and returns 0.
plot_run() {
    local run=$1
    if ! command -v gnuplot >/dev/null 2>&1; then
        say "gnuplot is not installed (Debian package gnuplot-nox, which launch/setup.sh installs): no loss.png"
        return 0
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        say "python3 is not installed: no loss.png"
        return 0
    fi
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/coalition-plot.XXXXXX")
    local time_plots=() token_plots=() m name dat
    for m in "$run"/site-*/metrics.jsonl; do
        [ -f "$m" ] || continue
        name=$(basename "$(dirname "$m")")
        name=${name#site-}
        dat="$tmp/site-$name.dat"
        "${tool[@]}" columns "$m" elapsed_s tokens loss >"$dat" || { rm -rf "$tmp"; return 1; }
        [ -s "$dat" ] || continue
        time_plots+=("'$dat' using (\$1/60):3 with lines lw 1 title 'site $name: training loss'")
        token_plots+=("'$dat' using (\$2/1e6):3 with lines lw 1 title 'site $name: training loss'")
    done
    m="$run/coordinator/metrics.jsonl"
    if [ -f "$m" ]; then
        dat="$tmp/coordinator.dat"
        "${tool[@]}" columns "$m" elapsed_s tokens_total val_loss --event round >"$dat" ||
            { rm -rf "$tmp"; return 1; }
        if [ -s "$dat" ]; then
            time_plots+=("'$dat' using (\$1/60):3 with linespoints lw 2 pt 7 lc rgb 'black' title 'coalition: validation loss'")
            token_plots+=("'$dat' using (\$2/1e6):3 with linespoints lw 2 pt 7 lc rgb 'black' title 'coalition: validation loss'")
        fi
    fi
    if [ ${#time_plots[@]} -eq 0 ]; then
        say "no loss records in $run/site-*/metrics.jsonl or $run/coordinator/metrics.jsonl: no loss.png"
        rm -rf "$tmp"
        return 0
    fi
    local terminal="pngcairo size 1000,1000"
    gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo || terminal="png size 1000,1000"
    local joined_time joined_tokens
    joined_time=$(printf '%s, ' "${time_plots[@]}")
    joined_tokens=$(printf '%s, ' "${token_plots[@]}")
    cat >"$tmp/loss.gp" <<EOF
set terminal $terminal
set output '$tmp/loss.png'
set multiplot layout 2,1 title 'Entente local coalition: $(basename "$run")'
set grid
set key top right
set ylabel 'loss (nats per byte)'
set xlabel 'minutes since each process started'
plot ${joined_time%, }
set xlabel 'million tokens trained (a site: its own; the coalition: all sites)'
plot ${joined_tokens%, }
unset multiplot
EOF
    if gnuplot "$tmp/loss.gp" 2>"$tmp/gnuplot.err"; then
        mv "$tmp/loss.png" "$run/loss.png"
        say "loss plot: $run/loss.png"
        rm -rf "$tmp"
        return 0
    fi
    echo "coalition: error: gnuplot failed on $tmp/loss.gp:" >&2
    cat "$tmp/gnuplot.err" >&2
    return 1
}

if [ -n "$plot_dir" ]; then
    plot_run "$plot_dir"
    exit
fi

# ---------------------------------------------------------------------------
# prerequisites and the sites' data

entente=$root/build/entente
[ -x "$entente" ] || die "build/entente is missing: run launch/build.sh first"
command -v mpirun >/dev/null 2>&1 || die "mpirun is not installed: run launch/setup.sh (openmpi-bin)"
command -v python3 >/dev/null 2>&1 || die "python3 is not installed: run launch/setup.sh"

# the effective configuration (configs/coalition.ini and --set), checked
# before anything starts; the sample at the end reads its [sample] keys
config=$("$entente" train --config configs/coalition.ini "${sets[@]}" --print-config) ||
    die "configs/coalition.ini with the --set options given does not load (above)"

launch/corpus.sh
corpus=data/kjv
names=("${site_names[@]:0:$sites}")

# data/coalition-N[-striped]/site-NAME: the sites' parts, split again
# whenever data/kjv's training shard is newer than the last split.
split_dir=data/coalition-$sites
split_args=()
if [ "$split" = striped ]; then
    split_dir=$split_dir-striped
    split_args=(--stripe 65536)
fi
stamp=$split_dir/.complete
if [ ! -f "$stamp" ] || [ "$corpus/train_000000.bin" -nt "$stamp" ]; then
    say "cutting the training tokens of $corpus into $sites $split part(s) in $split_dir"
    rm -rf "$split_dir"
    mkdir -p "$split_dir"
    parts=()
    for n in "${names[@]}"; do
        parts+=("$split_dir/site-$n.txt")
    done
    "${tool[@]}" split "${split_args[@]}" "$corpus" "${parts[@]}"
    for n in "${names[@]}"; do
        # no validation split: the coordinator evaluates on data/kjv's
        "$entente" data prepare --input "$split_dir/site-$n.txt" --output "$split_dir/site-$n" \
            --val-fraction 0 --force
    done
    touch "$stamp"
fi

# ---------------------------------------------------------------------------
# the run

base=runs/coalition-$(date +%Y%m%d-%H%M%S)
run=$base
mkdir -p runs
i=1
until mkdir "$run" 2>/dev/null; do # two runs started in the same second
    i=$((i + 1))
    [ $i -le 99 ] || die "cannot create a run directory $base in runs/"
    run=$base-$i
done
say "run directory $run"

# Threads: the machine's cores shared among all ranks (the coordinator idles
# between evaluations), unless OMP_NUM_THREADS says otherwise.
ranks_total=$((sites + 1))
if [ -z "${OMP_NUM_THREADS:-}" ]; then
    threads=$(($(nproc) / ranks_total))
    [ "$threads" -ge 1 ] || threads=1
    export OMP_NUM_THREADS=$threads
fi

mpi_env=()
if [ "$(id -u)" = 0 ]; then
    mpi_env=(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
fi
# more processes than cores: a rank that waits in a collective yields its
# core instead of spinning on it (Open MPI spins by default)
[ $((ranks_total + 1)) -gt "$(nproc)" ] && mpi_env+=(OMPI_MCA_mpi_yield_when_idle=1)

pids=()      # every process started, by PID
pid_names=() # the same order: coordinator, site a, ...

# stop_all: SIGTERM to every process still running (mpirun passes it on to
# its ranks, which save and stop), then SIGKILL to what is left of each
# process tree after 30 s.
stop_all() {
    local pid tree=() t
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        tree+=("$pid" $(pgrep -P "$pid" 2>/dev/null || true))
        kill -TERM "$pid" 2>/dev/null || true
    done
    [ ${#tree[@]} -gt 0 ] || return 0
    for t in $(seq 300); do
        local alive=0
        for pid in "${tree[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ $alive = 1 ] || return 0
        sleep 0.1
    done
    for pid in "${tree[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}

interrupted() {
    trap - INT TERM
    echo
    say "interrupted: stopping every process of $run"
    stop_all
    say "stopped; launch/coalition.sh --plot $run draws what ran"
    exit 130
}
trap interrupted INT TERM
trap stop_all EXIT

# start NAME CMD...: runs CMD in the background, its output prefixed with
# [NAME] and kept in $run/NAME.log. CMD runs in a session of its own, so a
# Ctrl-C reaches only this script, which stops everything in order (mpirun
# would otherwise quit at once and leave its ranks to finish alone); the
# prefixer ignores the signals and ends when CMD's output does.
start() {
    local name=$1
    shift
    setsid "$@" > >(trap '' INT TERM; tee "$run/${name// /-}.log" | sed -u "s/^/[$name] /") 2>&1 &
    pids+=($!)
    pid_names+=("$name")
}

# the link runs secured, as a real coalition's: a key pair for the
# coordinator and each site (entente keygen), the sites' public keys in the
# coordinator's allowlist
keys=$run/keys
"$entente" keygen coordinator "${names[@]}" --dir "$keys" >"$run/keygen.log" 2>&1 ||
    die "entente keygen failed: $(cat "$run/keygen.log")"
mkdir -p "$keys/allow"
for n in "${names[@]}"; do cp "$keys/$n.pub" "$keys/allow/"; done
say "CurveZMQ keys for the coordinator and ${#names[@]} site(s) in $keys"

start coordinator "$entente" coordinator --config configs/coalition.ini --run-dir "$run/coordinator" \
    --set "coalition.sites=$sites" --set 'coalition.bind=tcp://127.0.0.1:*' \
    --set "coalition.key=$keys/coordinator.key" --set "coalition.allow=$keys/allow" "${sets[@]}"

# the endpoint file: one line, complete once it ends with a newline
endpoint=""
for t in $(seq 1200); do
    if [ -s "$run/coordinator/endpoint" ] && IFS= read -r endpoint <"$run/coordinator/endpoint" &&
        [ -n "$endpoint" ]; then
        break
    fi
    endpoint=""
    kill -0 "${pids[0]}" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$endpoint" ]; then
    rc=0
    kill -0 "${pids[0]}" 2>/dev/null || { wait "${pids[0]}" || rc=$?; }
    [ $rc = 0 ] || die "the coordinator exited with code $rc before listening (its output: $run/coordinator.log)"
    die "the coordinator wrote no $run/coordinator/endpoint within 120 s (its output: $run/coordinator.log)"
fi
say "coordinator listening on $endpoint; starting ${#names[@]} site(s)"

# the 2-rank site's batch: the configuration's, down to a multiple of its
# ranks (configs/coalition.ini's 11 becomes 10: 10 + 11 + 11 = demo.ini's 32)
batch=$(printf '%s\n' "$config" | "${tool[@]}" ini-value train batch_size)
for n in "${names[@]}"; do
    np=1
    site_sets=()
    if [ "$n" = a ]; then
        np=2
        [ "$batch" -ge 2 ] && site_sets=(--set "train.batch_size=$((batch - batch % 2))")
    fi
    start "site $n" env "${mpi_env[@]}" mpirun -np $np --oversubscribe --bind-to none \
        "$entente" train --config configs/coalition.ini --run-dir "$run/site-$n" \
        --set "coalition.coordinator=$endpoint" --set "coalition.site=$n" \
        --set "coalition.key=$keys/$n.key" --set "coalition.coordinator_key=$keys/coordinator.pub" \
        --set "data.dir=$split_dir/site-$n" --set sample.tokens=0 "${site_sets[@]}" "${sets[@]}"
done

# wait for all; the first that fails stops the others
running=("${pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
    done_pid=""
    rc=0
    wait -n -p done_pid "${running[@]}" || rc=$?
    [ -n "$done_pid" ] || die "lost track of the processes started (wait returned $rc)"
    who=""
    for i in "${!pids[@]}"; do
        [ "${pids[$i]}" = "$done_pid" ] && who=${pid_names[$i]}
    done
    for i in "${!running[@]}"; do
        [ "${running[$i]}" = "$done_pid" ] && unset 'running[i]'
    done
    if [ "$rc" != 0 ]; then
        echo "coalition: error: $who exited with code $rc (its output: $run/${who// /-}.log); stopping the others" >&2
        stop_all
        exit 1
    fi
    say "$who finished"
done
trap - INT TERM EXIT
wait # the output prefixers

# ---------------------------------------------------------------------------
# sample and plot

sample_value() { # sample_value KEY
    printf '%s\n' "$config" | "${tool[@]}" ini-value sample "$1"
}
tokens=$(sample_value tokens)
temperature=$(sample_value temperature)
prompt=$(sample_value prompt)
seed=$(sample_value seed)
sample_args=(--tokens "$tokens" --temperature "$temperature" --seed "$seed")
[ -z "$prompt" ] || sample_args+=(--prompt "$prompt")
echo "---- sample from the coalition's anchor ($run/coordinator/checkpoints/latest) ----"
"$entente" sample --checkpoint "$run/coordinator/checkpoints/latest" "${sample_args[@]}" | tee "$run/sample.txt"
echo "----"

plot_run "$run" || true
say "done: $run"
