#!/usr/bin/env bash
# The acid test: payloads encoded on (emulated) arm64 decode on x86-64 to the same symbols and the same images
# as x86-64's own, and the reverse. Bundles are made on x86-64; the arm64 side is the wheel install of build.sh.
#
#   bash benchmarks/arm64/acid.sh                      # the default bundles (made here on first use, cached)
#   bash benchmarks/arm64/acid.sh BUNDLE [BUNDLE ...]  # any bundles (fp32, and int8 where they have it)
#   ACID_SKIP_BUILD=1 ...                              # reuse the device install as it is
#   ACID_PHOTOS=24 ACID_DIGITS=256 ACID_MAX_SIDE=512   # inputs per bundle (any-size bundles keep photo sizes)
#   ACID_REVERSE=batch                                 # arm64 decodes one --batch payload instead of x86's files
#
# Per bundle and precision: x86 encode and arm64 encode of the same folder (one payload per image); the
# payloads compared byte for byte; both decoded on x86 (symbols and PNGs compared); then x86's payloads decoded
# on arm64 (symbols and PNGs against x86's decode of them). Symbols and payloads must be
# identical: a payload decodes to the same symbols on both CPUs. Images decoded on two different CPUs by a float
# decoder graph may differ by a grey level where a float lands within an ulp of a rounding boundary: reported as
# NEAR with the count (exit 0); more than one level, or any symbol difference, is a FAIL (exit 1). Payloads of
# one image encoded on both CPUs must be byte-identical for int8 encoders; a float encoder graph may round a
# latent within an ulp of k + 1/2 differently (a different valid payload): reported as DIFF, not a failure.
# Emulated times are sanity figures only.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=benchmarks/arm64/env.sh
source "$HERE/env.sh"
HOST_PY="${HOST_PY:-$REPO/.venv/bin/python}"
[ -x "$HOST_PY" ] || HOST_PY=/work/main/.venv/bin/python
# The host side runs the same tree the device's wheel was built from (build.sh's EDGEAE_ARM64_SRC).
export PYTHONPATH="${EDGEAE_ARM64_SRC:-$REPO}" OMP_NUM_THREADS=1
host_edgeae() { "$HOST_PY" -P -c 'from edgeae.cli import main; main(prog_name="edgeae")' "$@"; }
ACID="$HOST_PY -P $HERE/acid.py"
WORK="$CACHE/acid"

[ "${ACID_SKIP_BUILD:-0}" = 1 ] || bash "$HERE/build.sh" >"$CACHE/build.out" 2>&1 \
    || { cat "$CACHE/build.out"; exit 1; }

# The default bundles: the demo's digits conv AE and a small photo codec, trained and exported here once.
default_bundles() {
    local b="$CACHE/bundles" r="$CACHE/runs"
    mkdir -p "$b" "$r"
    if [ ! -f "$b/digits-conv/manifest.json" ]; then
        host_edgeae train --model conv --dataset digits --epochs 60 --batch-size 32 --lr 3e-3 \
            --out "$r/digits-conv" --force >/dev/null
        host_edgeae export "$r/digits-conv" --int8 --no-speed --out "$b/digits-conv" --force >/dev/null
    fi
    if [ ! -f "$b/photos-codec-128/manifest.json" ]; then
        host_edgeae train --model codec --dataset photos --color rgb --patch 64 --epochs 2 --lmbda 0.01 \
            --out "$r/photos-codec" --force >/dev/null
        host_edgeae export "$r/photos-codec" --int8 --input-size 128,128 --no-speed \
            --out "$b/photos-codec-128" --force >/dev/null
    fi
    echo "$b/digits-conv" "$b/photos-codec-128"
}
if [ $# -gt 0 ]; then BUNDLES=("$@"); else read -ra BUNDLES <<<"$(default_bundles)"; fi

secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
now() { date +%s.%N; }
status=0
check() { "$@" || status=1; }

echo "== acid test $(date -u +%FT%TZ): host $(uname -m) $(nproc --all) cores; arm64 = qemu-user $("$QEMU" --version | head -1 | awk '{print $3}') -cpu $ARM_CPU"
echo "   device install: $(grep '^Successfully installed' "$CACHE/install.log" | cut -c 24-)"
echo "   coder: x86 $("$HOST_PY" -P -c 'from edgeae.runtime.doctor import coder_backend as c; print(c())' 2>/dev/null || echo unknown), arm64 $(arm_python -c 'from edgeae.runtime.doctor import coder_backend as c; print(c())' 2>/dev/null || echo unknown)"
for bundle in "${BUNDLES[@]}"; do
    bundle="$(cd "$bundle" && pwd)"
    name="$(basename "$bundle")"
    w="$WORK/$name"
    rm -rf "$w" && mkdir -p "$w"
    echo
    echo "== bundle $name ($bundle)"
    echo "   inputs: $($ACID prepare "$bundle" "$w/in" --photos "${ACID_PHOTOS:-24}" --digits "${ACID_DIGITS:-256}" --max-side "${ACID_MAX_SIDE:-512}")"
    precisions=(fp32)
    grep -q '"int8_file": "' "$bundle/manifest.json" && precisions+=(int8)
    for prec in "${precisions[@]}"; do
        flag=() && [ "$prec" = int8 ] && flag=(--int8)
        p="$w/$prec"
        mkdir -p "$p"
        t0=$(now); host_edgeae encode "$w/in" --bundle "$bundle" "${flag[@]}" --threads 1 --out "$p/enc-x86" >"$p/log-enc-x86"
        t1=$(now); arm_edgeae encode "$w/in" --bundle "$bundle" "${flag[@]}" --threads 1 --out "$p/enc-arm" >"$p/log-enc-arm"
        t2=$(now)
        n=$(find "$w/in" -type f | wc -l)
        echo "-- $prec: encode $n images, 1 thread: x86 $(secs "$t0" "$t1") s, arm64 emulated $(secs "$t1" "$t2") s (sanity figure only)"
        echo "   $(tail -1 "$p/log-enc-arm")"
        # The same image encoded on both CPUs: an int8 encoder graph gives the same payload bit for bit; a float
        # (fp32) one may round a latent that lies within an ulp of k + 1/2 the other way on the other CPU, a
        # different but valid payload, so for fp32 a difference is reported (DIFF) and does not fail the test.
        if [ "$prec" = int8 ]; then
            check $ACID compare "payloads, arm64 encode vs x86 encode" "$p/enc-arm" "$p/enc-x86"
        else
            $ACID compare "payloads, arm64 encode vs x86 encode (float encoder graph)" "$p/enc-arm" "$p/enc-x86" 2>&1 \
                | sed 's/^FAIL/DIFF/' || true
        fi
        # arm64's payloads decoded on x86 must give what arm64 itself decodes from them: symbols and images
        $ACID symbols "$bundle" "$p/enc-arm" "$p/sym-arm-on-x86.npz" >/dev/null
        arm_python "$HERE/acid.py" symbols "$bundle" "$p/enc-arm" "$p/sym-arm-on-arm.npz" >/dev/null
        check $ACID compare "symbols, x86 decode of arm64 payloads vs arm64 decode of them" "$p/sym-arm-on-x86.npz" "$p/sym-arm-on-arm.npz"
        host_edgeae decode "$p/enc-arm" --bundle "$bundle" "${flag[@]}" --threads 1 --out "$p/dec-arm-on-x86" >/dev/null
        arm_edgeae decode "$p/enc-arm" --bundle "$bundle" "${flag[@]}" --threads 1 --out "$p/dec-arm-on-arm" >/dev/null
        check $ACID compare "images, x86 decode of arm64 payloads vs arm64 decode of them" --pixels --near 1 "$p/dec-arm-on-x86" "$p/dec-arm-on-arm"
        host_edgeae decode "$p/enc-x86" --bundle "$bundle" "${flag[@]}" --threads 1 --out "$p/dec-x86-on-x86" >/dev/null
        # The reverse: x86 encodes, arm64 decodes: the same per-image payloads, or with ACID_REVERSE=batch one
        # --batch payload of the whole folder (a multi-item payload; the numpy coder decodes its items side by side).
        src="$p/enc-x86"
        if [ "${ACID_REVERSE:-each}" = batch ]; then
            src="$p/batch-x86"
            host_edgeae encode "$w/in" --bundle "$bundle" "${flag[@]}" --threads 1 --batch --out "$src" >/dev/null
        fi
        t3=$(now); arm_edgeae decode "$src" --bundle "$bundle" "${flag[@]}" --threads 1 --out "$p/dec-rev-on-arm" >/dev/null
        t4=$(now)
        [ "$src" = "$p/enc-x86" ] || host_edgeae decode "$src" --bundle "$bundle" "${flag[@]}" --threads 1 --out "$p/dec-x86-on-x86" >/dev/null
        echo "   arm64: $(arm_python "$HERE/acid.py" symbols "$bundle" "$src" "$p/sym-rev-on-arm.npz")"
        $ACID symbols "$bundle" "$src" "$p/sym-rev-on-x86.npz" >/dev/null
        echo "   reverse: arm64 decodes x86's $(find "$src" -name '*.eae' | wc -l) payload(s): $(secs "$t3" "$t4") s emulated"
        check $ACID compare "symbols, arm64 decode of x86 payloads vs x86 decode" "$p/sym-rev-on-arm.npz" "$p/sym-rev-on-x86.npz"
        check $ACID compare "images, arm64 decode of x86 payloads vs x86 decode" --pixels --near 1 "$p/dec-rev-on-arm" "$p/dec-x86-on-x86"
    done
done
echo
[ "$status" = 0 ] && echo "== acid test PASSED" || echo "== acid test FAILED (see FAIL lines)"
exit "$status"
