#!/usr/bin/env bash
# if_backend.sh TEST_BACKEND_OPS NAME CMD...: runs CMD when backend NAME can
# run on this machine, else exits 77 (skipped) with the reason (no GPU
# visible, or a build without CUDA), so GPU-labelled tests skip cleanly.
probe=$1 name=$2
shift 2
"$probe" --available "$name" || exit $?
exec "$@"
