# Sourced by build.sh and acid.sh: where the emulated arm64 machine lives and how to start a program on it.
#   EDGEAE_ARM64_CACHE  the machine's folder [~/.cache/edgeae-arm64]
#   EDGEAE_ARM64_CPU    the emulated core: cortex-a72 (Raspberry Pi 4, default), cortex-a76 (Pi 5),
#                       cortex-a53 (Pi Zero 2 / Pi 3), cortex-a57 (Jetson Nano), neoverse-n1, max
# shellcheck shell=bash
CACHE="${EDGEAE_ARM64_CACHE:-$HOME/.cache/edgeae-arm64}"
ROOT="$CACHE/root"
VENV="$CACHE/venv"
QEMU=qemu-aarch64-static
ARM_CPU="${EDGEAE_ARM64_CPU:-cortex-a72}"

log() { echo "[arm64 $(date +%H:%M:%S)] $*"; }

# qemu-user passes the host's /proc/cpuinfo (x86) through, and onnxruntime's cpuinfo library, finding no ARM
# core in it, dereferences NULL on import. qemu resolves absolute paths inside -L ROOT first, so a
# ROOT/proc/cpuinfo in the kernel's arm64 format, one entry per possible host CPU, is what the guest reads.
# (A real device has a real one; this is only for the emulator.)
_fake_cpuinfo() {
    local part
    case "$ARM_CPU" in
        cortex-a53) part=0xd03 ;; cortex-a57) part=0xd07 ;; cortex-a72) part=0xd08 ;;
        cortex-a76) part=0xd0b ;; neoverse-n1) part=0xd0c ;; *) part=0xd08 ;;
    esac
    local last i
    last=$(sed 's/.*-//' /sys/devices/system/cpu/possible)
    mkdir -p "$ROOT/proc"
    for i in $(seq 0 "$last"); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n\n' "$part"
    done >"$ROOT/proc/cpuinfo"
}

# run_arm BINARY ARGS...: an arm64 binary (host path) under qemu, libraries from ROOT.
run_arm() {
    [ -f "$ROOT/proc/cpuinfo" ] && grep -q "^# $ARM_CPU$" "$ROOT/proc/.cpu" 2>/dev/null \
        || { _fake_cpuinfo && echo "# $ARM_CPU" >"$ROOT/proc/.cpu"; }
    # The guest sees a device's environment: it imports what is installed in its venv, never this checkout
    # (PYTHONPATH is for the host side), and its pip reads neither this host's PIP_* variables (find-links,
    # indexes) nor its pip.conf (qemu would show the guest the host's /etc/pip.conf).
    local clean=(-u PYTHONPATH -u PYTHONHOME -u PYTHONDONTWRITEBYTECODE) v
    for v in $(compgen -e | grep '^PIP_' || true); do clean+=(-u "$v"); done
    # PYTHONSAFEPATH: `python -c` must not import an edgeae checkout from the current directory either.
    env "${clean[@]}" PIP_CONFIG_FILE=/dev/null PYTHONSAFEPATH=1 "$QEMU" -cpu "$ARM_CPU" -L "$ROOT" "$@"
}

# arm_python ARGS...: the device venv's Python; arm_edgeae ARGS...: its installed `edgeae` console script
# (qemu-user does not follow `#!` lines, so the script is given to the interpreter).
arm_python() { run_arm "$VENV/bin/python3.11" "$@"; }
arm_edgeae() { arm_python "$VENV/bin/edgeae" "$@"; }
