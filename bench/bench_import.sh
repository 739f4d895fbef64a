#!/usr/bin/env bash
# bench_import.sh ENTENTE [WORKDIR] [DTYPE] [ARCH]: `entente ckpt import` of
# a GPT-2-small-sized Hugging Face directory (124M parameters: 12 layers, 12
# heads, width 768, context 1024, vocab 50257; random weights written with
# numpy by tests/hf_import.py, as transformers lays them out, DTYPE F32 by
# default, or BF16, F16), or with ARCH llama a Llama of the same depth and
# width (12 heads over 4 KV heads, SwiGLU of 2048, vocab 32000, untied
# lm_head: 125M parameters, no Conv1D weights to transpose), against dd on
# the same file system in the same run:
#   read     the import's own figure for reading and widening every tensor
#            (its "read N tensors (M MiB as stored) in S s" line), MiB/s of
#            the bytes it reads, against dd reading model.safetensors (all
#            of it: the tied lm_head and the mask buffers too), MiB/s;
#   whole    the whole import (start, read, write the checkpoint with its
#            checksums and fsync) against dd reading the safetensors plus dd
#            writing as many bytes as the checkpoint has, with conv=fsync.
# Both read from the disk: the files are dropped from the page cache first.
# Five rounds, the import and dd in turn first, medians. It prints figures; it never passes or
# fails. It writes about 2 GB in WORKDIR (default: a new directory under
# TMPDIR) and removes what it wrote.
set -u
E=$(realpath "$1")
W=${2:-$(mktemp -d "${TMPDIR:-/tmp}/bench-import.XXXXXX")}
DTYPE=${3:-F32}
ARCH=${4:-gpt2}
SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
mkdir -p "$W" || exit 1
trap 'rm -rf "$W/m" "$W/a.h5" "$W/dd.bin"' EXIT
case "$ARCH" in
gpt2) "$PY" "$SRC/tests/hf_import.py" write "$W/m" --layers 12 --heads 12 --width 768 \
    --context 1024 --vocab 50257 --dtype "$DTYPE" || exit 1 ;;
llama) "$PY" "$SRC/tests/hf_import.py" write "$W/m" --llama --layers 12 --heads 12 --kv-heads 4 \
    --width 768 --ffn 2048 --context 1024 --vocab 32000 --dtype "$DTYPE" || exit 1 ;;
*) echo "bench_import: ARCH is gpt2 or llama, not $ARCH"; exit 2 ;;
esac
drop() { "$PY" -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.fdatasync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"; }
now() { date +%s.%N; }
ST="$W/m/model.safetensors"
stbytes=$(stat -c %s "$ST")
echo "bench_import: $([ "$ARCH" = llama ] && echo "a GPT-2-small-sized Llama" || echo "GPT-2 small") as $DTYPE, model.safetensors $((stbytes / 1048576)) MiB, in $W"
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
     "disk: $(df -h "$W" | awk 'NR == 2 { print $1 }') ($(df -T "$W" | awk 'NR == 2 { print $2 }'))"
R=()
import_once() { # sets t0, t1, line, ckbytes
    rm -f "$W/a.h5"
    drop "$ST"
    t0=$(now)
    line=$("$E" ckpt import --from "$W/m" --out "$W/a.h5" | grep '^read ') || { echo "import failed"; exit 1; }
    t1=$(now)
    ckbytes=$(stat -c %s "$W/a.h5")
}
dd_once() { # sets t2, t3, t4
    drop "$ST"
    t2=$(now)
    dd if="$ST" of=/dev/null bs=16M status=none
    t3=$(now)
    dd if=/dev/zero of="$W/dd.bin" bs=16M count=$(( (ckbytes + 16777215) / 16777216 )) conv=fsync status=none
    t4=$(now)
    rm -f "$W/dd.bin"
}
ckbytes=$(( stbytes * 3 )) # the checkpoint's size, until the first import gives it
for r in 1 2 3 4 5; do
    # the import and dd in turn first: a virtual disk's host may cache what
    # was read last, and both should find the file alike
    if [ $((r % 2)) = 1 ]; then import_once; dd_once; else dd_once; import_once; fi
    rate=$(echo "$line" | sed -n 's/.*: \([0-9.]*\) MiB\/s$/\1/p')
    R+=("$(awk -v i0="$t0" -v i1="$t1" -v d0="$t2" -v d1="$t3" -v d2="$t4" -v b="$stbytes" -v rate="$rate" \
        'BEGIN { printf "%.1f %.1f %.3f %.3f", rate, b / 1048576 / (d1 - d0), i1 - i0, (d1 - d0) + (d2 - d1) }')")
    echo "round $r: import read $rate MiB/s, whole $(echo "${R[-1]}" | cut -d' ' -f3) s; dd read $(echo "${R[-1]}" | cut -d' ' -f2) MiB/s, dd read + write $(echo "${R[-1]}" | cut -d' ' -f4) s"
done
printf '%s\n' "${R[@]}" | awk '{ a[NR] = $1; b[NR] = $2; c[NR] = $3; d[NR] = $4 }
function med(x, n,   i, j, t, y) { for (i = 1; i <= n; i++) y[i] = x[i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (y[j] < y[i]) { t = y[i]; y[i] = y[j]; y[j] = t }
    return n % 2 ? y[(n + 1) / 2] : (y[n / 2] + y[n / 2 + 1]) / 2 }
END { n = NR
    printf "\n%-52s %10s\n", "median of 5", ""
    printf "%-52s %10.0f MiB/s\n", "import: reading and widening the tensors", med(a, n)
    printf "%-52s %10.0f MiB/s\n", "dd read of model.safetensors (baseline)", med(b, n)
    printf "%-52s %10.2f s\n", "import, whole (start, read, write, fsync)", med(c, n)
    printf "%-52s %10.2f s\n", "dd read + dd write conv=fsync, same bytes (baseline)", med(d, n)
    printf "\n%-52s %9.1f%%\n", "import read / dd read", 100 * med(a, n) / med(b, n)
    printf "%-52s %9.1f%%\n", "whole import / (dd read + dd write)", 100 * med(d, n) / med(c, n) }'
