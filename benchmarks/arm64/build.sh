#!/usr/bin/env bash
# Build (once) an emulated arm64 machine from Debian's packages and install edgeae's runtime on it the way a
# Raspberry Pi / Jetson would: its wheel plus the aarch64 wheels of its dependencies, no torch, no compiler.
#
#   bash benchmarks/arm64/build.sh          # build or reuse the cache, (re)install the current tree's wheel
#   EDGEAE_ARM64_CACHE=/some/dir bash ...   # where the machine lives [~/.cache/edgeae-arm64]
#   bash benchmarks/arm64/build.sh --without constriction   # the wheel built with that requirement deleted
#                                                            # from pyproject.toml (to show what else blocks)
#   EDGEAE_ARM64_SRC=/other/checkout bash ...                # install another tree's wheel [this checkout]
#
# Needs root on a Debian bookworm x86-64 host with apt (qemu-user-static, arm64 .debs) and the package
# index (aarch64 wheels). Not run by CI: building takes minutes and every emulated run is ~10-50x slower.
# Layout of the cache (every step is skipped when its output exists; delete a folder to redo that step):
#   debs/      bookworm arm64 .deb files          root/   their contents (qemu's -L sysroot)
#   index/     aarch64 wheels from the index      venv/   the device's virtual environment (arm64 Python)
#   wheel/     this project's wheel, built here   install.log  the last device install, verbatim
set -euo pipefail
WITHOUT=""
if [ "${1:-}" = "--without" ]; then WITHOUT="${2:?--without needs a requirement name}"; fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=benchmarks/arm64/env.sh
source "$HERE/env.sh"
HOST_PY="${HOST_PY:-$REPO/.venv/bin/python}"
[ -x "$HOST_PY" ] || HOST_PY=/work/main/.venv/bin/python
PLATFORM=manylinux_2_28_aarch64  # pip expands it to the older manylinux tags too
mkdir -p "$CACHE"

# bookworm arm64 packages: Python 3.11 with its whole stdlib, and the shared libraries that the stdlib's
# extension modules (ssl, ctypes, bz2, lzma, sqlite3, dbm, readline, uuid, nis) and the manylinux wheels
# (numpy, onnxruntime, Pillow: libstdc++, libgcc_s) link against. Resolved by hand from `apt-cache depends`
# so that nothing with maintainer scripts (perl, dpkg, tar) is pulled in.
DEBS=(libc6 gcc-12-base libgcc-s1 libstdc++6 zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5
      libsqlite3-0 libcrypt1 libdb5.3 libncursesw6 libtinfo6 libreadline8 libnsl2 libtirpc3 libuuid1
      libgssapi-krb5-2 libk5crypto3 libkrb5-3 libkrb5support0 libkeyutils1 libcom-err2
      python3.11-minimal libpython3.11-minimal libpython3.11-stdlib)
DEBS_ALL=(media-types)  # Architecture: all (/etc/mime.types for the mimetypes module)

# 1. qemu-user-static from Debian (no binfmt registration: every binary is started as `$QEMU -L $ROOT ...`).
if ! command -v "$QEMU" >/dev/null; then
    log "installing qemu-user-static"
    apt-get install -y -q qemu-user-static >/dev/null
fi

# 2. The arm64 .deb files, unpacked into the sysroot.
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "dpkg --add-architecture arm64; apt-get update"
        dpkg --add-architecture arm64
        apt-get update -q >/dev/null
    fi
    mkdir -p "$CACHE/debs"
    log "downloading $(( ${#DEBS[@]} + ${#DEBS_ALL[@]} )) bookworm .deb files"
    (cd "$CACHE/debs" && apt-get download -q "${DEBS[@]/%/:arm64}" "${DEBS_ALL[@]}" 2>&1 | grep -v "unsandboxed" || true)
    got=$(ls "$CACHE"/debs/*.deb | wc -l)
    [ "$got" -eq $(( ${#DEBS[@]} + ${#DEBS_ALL[@]} )) ] || { log "apt-get download gave $got .deb files"; exit 2; }
    rm -rf "$ROOT.tmp" && mkdir -p "$ROOT.tmp"
    for deb in "$CACHE"/debs/*.deb; do dpkg-deb -x "$deb" "$ROOT.tmp"; done
    # bookworm is merged-/usr: /lib -> usr/lib, so the ELF interpreter /lib/ld-linux-aarch64.so.1 resolves.
    for d in lib bin sbin; do [ -e "$ROOT.tmp/$d" ] || ln -s "usr/$d" "$ROOT.tmp/$d"; done
    mv "$ROOT.tmp" "$ROOT"
    log "sysroot ready: $(du -sh "$ROOT" | cut -f1)"
fi
log "$(run_arm "$ROOT/usr/bin/python3.11" -c 'import platform, sys; print("emulated", platform.machine(), "Python", sys.version.split()[0])')"

# 3. The project's wheel, built on this (x86) host from the working tree.
rm -rf "$CACHE/wheel" && mkdir -p "$CACHE/wheel"
SRC="${EDGEAE_ARM64_SRC:-$REPO}"  # the tree whose wheel the device gets [this checkout]
if [ -n "$WITHOUT" ]; then  # a copy of the tree (tracked + untracked, not ignored) minus that requirement
    from="$SRC" && SRC="$CACHE/src-without-$WITHOUT" && rm -rf "$SRC" && mkdir -p "$SRC"
    git -C "$from" ls-files -z --cached --others --exclude-standard | (cd "$from" && xargs -0 cp --parents -t "$SRC")
    sed -i "/^ *\"$WITHOUT[<>=~! ;\"]/d" "$SRC/pyproject.toml"
    log "building the wheel without the $WITHOUT requirement"
fi
"$HOST_PY" -m pip wheel -q --no-deps -w "$CACHE/wheel" "$SRC" >/dev/null
WHEEL="$(ls "$CACHE"/wheel/edgeae-*.whl)"
log "built $(basename "$WHEEL")"

# 4. The aarch64 wheels of its runtime dependencies (what the index offers a Pi), plus pip itself.
# Requirements are read from the wheel's own metadata, so this is exactly what `pip install edgeae` asks for.
mkdir -p "$CACHE/index"
REQS="$CACHE/requirements.txt"
# pip download evaluates environment markers for this x86 host even with --platform, so they are evaluated
# here for the device (aarch64 Linux, CPython 3.11) and only the requirements that apply to it are written.
"$HOST_PY" - "$WHEEL" >"$REQS" <<'EOF'
import sys, zipfile
from packaging.requirements import Requirement
device = {"platform_machine": "aarch64", "platform_system": "Linux", "sys_platform": "linux", "os_name": "posix",
          "python_version": "3.11", "python_full_version": "3.11.2", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "extra": ""}
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            r = Requirement(line.split(":", 1)[1].strip())
            if r.marker is None or r.marker.evaluate(device):
                r.marker = None
                print(r)
EOF
log "runtime requirements on aarch64 Linux: $(tr '\n' ' ' <"$REQS")"
download() {
    "$HOST_PY" -m pip download -q --dest "$CACHE/index" --only-binary=:all: --platform "$PLATFORM" \
        --python-version 3.11 --implementation cp --abi cp311 "$@"
}
if ! download -r "$REQS" 2>"$CACHE/download.err"; then
    log "the index has no aarch64 wheel for one of them:"
    grep -E "^ERROR" "$CACHE/download.err" | sed 's/^/    /'
    exit 3
fi
[ -n "$(ls "$CACHE"/index/pip-*.whl 2>/dev/null)" ] || download pip
PIP_WHL="$(ls "$CACHE"/index/pip-*.whl | tail -1)"

# 5. The device's venv (arm64 Python, --copies: the interpreter inside it must be the arm64 binary, not a
# symlink to /usr/bin/python3.11, which qemu would open on the host), then an offline install from the wheels.
# A fresh venv each time (seconds), so the install below is a first install, as on a new device.
rm -rf "$VENV"
run_arm "$ROOT/usr/bin/python3.11" -m venv --copies --without-pip "$VENV"
log "installing $(basename "$WHEEL") on emulated arm64 (offline: --no-index --find-links index/)"
start=$(date +%s)
if ! arm_python "$PIP_WHL/pip" install --no-cache-dir --disable-pip-version-check \
        --no-index --find-links "$CACHE/index" "$WHEEL" >"$CACHE/install.log" 2>&1; then
    log "install FAILED ($(( $(date +%s) - start )) s); the end of $CACHE/install.log:"
    tail -5 "$CACHE/install.log" | sed 's/^/    /'
    exit 4
fi
log "installed in $(( $(date +%s) - start )) s: $(grep '^Successfully installed' "$CACHE/install.log")"
log "$(arm_python -c 'import platform, numpy, onnxruntime as ort, edgeae; print(platform.machine(), "numpy", numpy.__version__, "onnxruntime", ort.__version__, ort.get_available_providers(), "edgeae", edgeae.__version__)' 2>&1 | tail -1)"
echo "$CACHE"
