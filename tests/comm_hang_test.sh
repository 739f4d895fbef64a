#!/usr/bin/env bash
# A rank that never reaches an agreement (stuck in I/O, stopped) must not hold
# the others forever: with a 2 s timeout every other rank leaves through the
# watchdog with exit code 3 and names the wait. Cases: agree (ent_comm_agree)
# and raw (a library collective under ent_comm_watch_begin, as the
# checkpoint's agreements run).
# Usage: comm_hang_test.sh TEST_COMM MPIEXEC
set -u
T=$1
MPIEXEC=$2
command -v "$MPIEXEC" >/dev/null || { echo "SKIP: no mpirun ($MPIEXEC)"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
err=$(mktemp)
trap 'rm -f "$err"' EXIT
failed=0
for what in agree raw; do
    t0=$SECONDS
    timeout 90 "$MPIEXEC" -np 3 "$T" --hang-before "$what" 2>"$err" >/dev/null
    rc=$?
    took=$((SECONDS - t0))
    case $what in
        agree) expect='an agreement on the world has not completed after 2 s' ;;
        raw) expect='an agreement of the test on the world has not completed after 2 s' ;;
    esac
    if [ "$rc" != 3 ]; then
        echo "FAIL $what: exit code $rc, expected 3 (124: hung until the test's own timeout)"
        failed=1
    elif [ "$took" -gt 30 ]; then
        echo "FAIL $what: the ranks left after $took s (timeout 2 s)"
        failed=1
    elif [ "$(grep -c "error: $expect" "$err")" -lt 2 ]; then
        echo "FAIL $what: fewer than 2 ranks reported '$expect'"
        failed=1
    else
        echo "ok $what: exit 3 after $took s, both waiting ranks named the wait"
    fi
    [ "$failed" = 0 ] || { echo "--- stderr:"; cat "$err"; }
done
exit "$failed"
