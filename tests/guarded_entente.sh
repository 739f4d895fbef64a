#!/usr/bin/env bash
# The entente binary with every `train` on the cpu-guarded backend (memory
# PROT_NONE outside the backend's own calls): the checkpoint script cases run
# through it as well, so that a save, a resume or a reshard that touched the
# backend's memory from outside would fault. ENTENTE_REAL names the binary;
# ENTENTE_TEST_BACKEND another backend (cuda: the same cases on a GPU).
if [ "${1:-}" = train ]; then
    shift
    exec "$ENTENTE_REAL" train "$@" --set system.backend="${ENTENTE_TEST_BACKEND:-cpu-guarded}"
fi
exec "$ENTENTE_REAL" "$@"
