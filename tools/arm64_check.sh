#!/usr/bin/env bash
# Run a real package on arm64 without a board: an emulated Debian bookworm arm64 (Raspberry Pi OS
# bookworm's base: Python 3.11, glibc 2.36) installs edgeexit's [device,tflite] extras from the
# registry with constraints.txt, the way a Pi would, then verifies and runs a package built here on
# x86-64; its answers are compared with this machine's.
#
#   tools/arm64_check.sh            (as root; slow: see docs/benchmarks.md "Platforms")
#
# What it does, and why:
#   1. debootstrap --arch arm64 a minimal bookworm root filesystem (python3, python3-venv) from the
#      apt mirror this machine already uses, run under qemu-user-static through binfmt_misc (the F
#      flag: the chroot needs no qemu binary of its own). The root filesystem is kept in $ROOTFS and
#      reused by later runs; delete it to start over.
#   2. build a small package here with the repo's own path (edgeexit train + export; --tflite when
#      the host Python has litert-torch), a wheel of the working tree, and 32 inputs (digits test split).
#   3. in the chroot: a venv from bookworm's python3, pip install -c constraints.txt
#      'edgeexit[device,tflite]' (aarch64 wheels from the registry, chosen by pip on aarch64 itself),
#      then edgeexit verify and edgeexit run (ONNX Runtime, and LiteRT when the package has it).
#   4. compare every input's prediction, exit and probabilities with the x86-64 run; exit 1 on a
#      mismatch beyond TOLERANCE (`edgeexit run --json` rounds probabilities to 1e-6).
#
# Only Debian's mirror and the package registry are contacted. Environment knobs: ROOTFS (default
# /var/tmp/edgeexit-arm64-bookworm), HOST_PYTHON (default the repo's .venv), MIRROR (default: the
# first Debian URI in /etc/apt/sources.list*), TOLERANCE (default 1e-4), EPOCHS (default 12).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOTFS=${ROOTFS:-/var/tmp/edgeexit-arm64-bookworm}
HOST_PYTHON=${HOST_PYTHON:-$REPO/.venv/bin/python}
TOLERANCE=${TOLERANCE:-1e-4}
EPOCHS=${EPOCHS:-12}
WORK=$(mktemp -d /tmp/arm64-check.XXXXXX)
INSIDE=/mnt/edgeexit-check # where $WORK appears in the chroot

step() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }
die() { printf 'arm64_check: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and binfmt_misc need it)"
[ -x "$HOST_PYTHON" ] || die "no host Python at $HOST_PYTHON: create the venv (README) or set HOST_PYTHON"
"$HOST_PYTHON" -c 'import torch, edgeexit.compile' 2>/dev/null ||
    die "$HOST_PYTHON cannot import torch and edgeexit.compile: it needs the [export] extra to build the package"

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    for mount in "$ROOTFS$INSIDE" "$ROOTFS/dev" "$ROOTFS/proc"; do
        if mountpoint -q "$mount"; then umount "$mount" || umount -l "$mount"; fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)\/\{0,1\}[[:space:]]*$/\1/p' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
    [ -n "$MIRROR" ] || MIRROR=$(sed -n 's/^deb[[:space:]]\{1,\}\(http[^[:space:]]*\/debian\)\/\{0,1\}[[:space:]].*/\1/p' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

step "host tools: debootstrap, qemu-user-static, binfmt-support"
if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null || ! command -v update-binfmts >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap qemu-user-static binfmt-support
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 2>/dev/null || true
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
    die "binfmt_misc has no enabled qemu-aarch64 entry: arm64 programs cannot run here"
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
    die "the qemu-aarch64 binfmt entry lacks the F (fix binary) flag: the chroot could not find qemu"
sed -n 's/^/  /p' /proc/sys/fs/binfmt_misc/qemu-aarch64 | head -n3

if [ ! -e "$ROOTFS/.edgeexit-ready" ]; then
    step "debootstrap arm64 bookworm from $MIRROR into $ROOTFS (second stage under qemu)"
    if grep -q " $ROOTFS/" /proc/mounts; then
        die "something is still mounted under $ROOTFS (an interrupted run?): unmount it before it is rebuilt"
    fi
    rm -rf --one-file-system "$ROOTFS"
    started=$SECONDS
    if ! debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.debootstrap.log" 2>&1; then
        tail -n 30 "$ROOTFS.debootstrap.log"
        die "debootstrap failed; its log: $ROOTFS.debootstrap.log"
    fi
    touch "$ROOTFS/.edgeexit-ready"
    echo "  debootstrap took $((SECONDS - started)) s ($(grep -c '^I: Retrieving [a-z]' "$ROOTFS.debootstrap.log") packages;" \
        "log: $ROOTFS.debootstrap.log)"
else
    step "reusing the arm64 root filesystem $ROOTFS (delete it to rebuild)"
fi
echo "  chroot: $(chroot "$ROOTFS" uname -m), $(chroot "$ROOTFS" python3 --version)," \
    "$(chroot "$ROOTFS" ldd --version | head -n1 | sed 's/.* //' | sed 's/^/glibc /')"

step "host ($(uname -m)): train and export a small package (sklearn digits' train split, $EPOCHS epochs)"
TFLITE=()
if "$HOST_PYTHON" -c 'import litert_torch, ai_edge_litert' 2>/dev/null; then
    TFLITE=(--tflite)
else
    echo "  the host Python has no litert-torch ([tflite-export]): no TFLite variant, LiteRT is not exercised"
fi
# The converters' warnings go to host-export.log, shown only if a step fails. (set -e does not
# act inside an `if` condition, hence the && chain.)
if ! (
    cd "$WORK" &&
        "$HOST_PYTHON" -m edgeexit train digits_cnn --data digits --epochs "$EPOCHS" --lr 0.005 --threads 1 \
            --seed 0 --out digits.pt 2>>host-export.log | tail -n 8 &&
        "$HOST_PYTHON" -m edgeexit export digits_cnn --weights digits.pt --input-shape 1,1,8,8 --data digits \
            --codecs "" "${TFLITE[@]}" --out pkg 2>>host-export.log | { grep -E '^(tflite:|exported)' || true; } &&
        "$HOST_PYTHON" - 2>>host-export.log <<'EOF'
# Held-out samples: the first 32 of the test split (training saw only the train split).
import numpy as np
from edgeexit.data import load_dataset

data = load_dataset("digits", split="test")
np.savez("inputs.npz", x=np.ascontiguousarray(data.x[:32]), y=data.y[:32])
EOF
); then
    tail -n 40 "$WORK/host-export.log"
    die "building the package on the host failed"
fi

step "host: a wheel of the working tree (pyproject.toml, README.md, edgeexit/)"
mkdir -p "$WORK/src" "$WORK/dist"
tar -C "$REPO" --exclude=__pycache__ -cf - pyproject.toml README.md edgeexit | tar -C "$WORK/src" -xf -
"$HOST_PYTHON" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
cp "$REPO/constraints.txt" "$WORK/"
WHEEL=$(basename "$(ls "$WORK"/dist/edgeexit-*.whl)")
echo "  $WHEEL"

BACKENDS=(onnxruntime)
[ -d "$WORK/pkg/tflite" ] && BACKENDS+=(tflite)
step "host: edgeexit run on x86-64 (${BACKENDS[*]})"
for backend in "${BACKENDS[@]}"; do
    (cd "$WORK" && "$HOST_PYTHON" -m edgeexit run pkg inputs.npz --backend "$backend" --json >"host-$backend.json")
done

step "arm64: venv from bookworm's python3, pip install -c constraints.txt 'edgeexit[device,tflite]'"
mkdir -p "$ROOTFS$INSIDE"
mount --bind "$WORK" "$ROOTFS$INSIDE"
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
mountpoint -q "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
# No /sys: ONNX Runtime's cpuinfo then logs "failed to parse the list of possible processors" and
# carries on; with the host's /sys it goes on to read the host's x86 /proc/cpuinfo as an ARM one
# and segfaults under qemu-user (seen with qemu 7.2). On a real board both are the board's own.
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
cp /etc/hosts "$ROOTFS/etc/hosts"
# This machine reaches the registry through a proxy with its own CA: hand pip the host's CA bundle
# (it only decides whom pip trusts, not what it installs). No pip configuration is copied.
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/host-ca-certificates.crt"
in_arm64() {
    chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/host-ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        ${HTTPS_PROXY:+HTTPS_PROXY="$HTTPS_PROXY"} ${HTTP_PROXY:+HTTP_PROXY="$HTTP_PROXY"} "$@"
}
started=$SECONDS
rm -rf "$ROOTFS/opt/edgeexit-venv"
in_arm64 python3 -m venv /opt/edgeexit-venv
in_arm64 /opt/edgeexit-venv/bin/pip install -q -c "$INSIDE/constraints.txt" "${INSIDE}/dist/${WHEEL}[device,tflite]"
echo "  installed in $((SECONDS - started)) s:"
in_arm64 /opt/edgeexit-venv/bin/python - <<'EOF'
import importlib.metadata as md
import platform

names = ("numpy", "onnxruntime", "grpcio", "protobuf", "ai-edge-litert", "pillow")
print(f"  {platform.machine()} Python {platform.python_version()}:", ", ".join(f"{n} {md.version(n)}" for n in names))
EOF
for module in torch onnx; do
    if in_arm64 /opt/edgeexit-venv/bin/python -c "import $module" 2>/dev/null; then
        die "$module is importable in the arm64 [device,tflite] venv; the device extras must not pull it"
    fi
done

step "arm64: edgeexit verify"
in_arm64 /opt/edgeexit-venv/bin/edgeexit verify "$INSIDE/pkg"

step "arm64: edgeexit run (${BACKENDS[*]})"
for backend in "${BACKENDS[@]}"; do
    in_arm64 /bin/sh -c "cd $INSIDE && /opt/edgeexit-venv/bin/edgeexit run pkg inputs.npz --backend $backend --json \
        >arm64-$backend.json"
done

step "compare arm64 with x86-64 (tolerance $TOLERANCE on every probability)"
set +e
"$HOST_PYTHON" - "$WORK" "$TOLERANCE" "${BACKENDS[@]}" <<'EOF'
import json
import sys
from pathlib import Path

work, tolerance, backends = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
failed = False
for backend in backends:
    host = json.loads((work / f"host-{backend}.json").read_text())
    arm = json.loads((work / f"arm64-{backend}.json").read_text())
    print(f"\n{backend}: {len(host)} inputs")
    print(f"{'input':>14} | {'x86-64 pred/exit/p':>20} | {'arm64 pred/exit/p':>20} | max |dp|")
    worst = 0.0
    for h, a in zip(host, arm, strict=True):
        diff = max(abs(x - y) for x, y in zip(h["probabilities"], a["probabilities"], strict=True))
        worst = max(worst, diff)
        bad = (h["prediction"], h["exit"]) != (a["prediction"], a["exit"]) or diff > tolerance
        failed |= bad
        print(
            f"{h['input']:>14} | {h['prediction']:>4} {h['exit']:>3} {max(h['probabilities']):.6f} "
            f"| {a['prediction']:>4} {a['exit']:>3} {max(a['probabilities']):.6f} | {diff:.1e}{'  MISMATCH' if bad else ''}"
        )
    same = sum((h["prediction"], h["exit"]) == (a["prediction"], a["exit"]) for h, a in zip(host, arm, strict=True))
    exits = [sum(r["exit"] == k for r in arm) for k in range(1 + max(r["exit"] for r in host + arm))]
    print(f"{backend}: {same}/{len(host)} same prediction and exit, exits per head {exits}, max |dp| {worst:.2e}")
sys.exit(1 if failed else 0)
EOF
status=$?
set -e
step "done: arm64 answers $([ $status = 0 ] && echo match || echo DIFFER) the x86-64 ones"
exit $status
