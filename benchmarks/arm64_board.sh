#!/usr/bin/env bash
# An emulated arm64 "board" for `kdpipe bench --device ssh://...`.
#
# Builds (once) a Debian arm64 root filesystem in a cache folder, outside the repository, runs
# it under qemu-user (binfmt_misc), and starts its own OpenSSH server on a loopback port with
# throw-away keys. kdpipe then benches ONNX (onnxruntime), LiteRT (.tflite, ai-edge-litert) and
# ExecuTorch files on it exactly as on a real board. Everything it runs is aarch64 code emulated
# on this CPU: the top-1 numbers are real, the latencies are NOT representative of any arm64
# hardware.
#
# Run `benchmarks/arm64_board.sh --help` for the commands.
set -euo pipefail

PROG=$(basename "$0")
CACHE=${KDPIPE_ARM64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kdpipe/arm64-board}
PORT=${KDPIPE_ARM64_PORT:-2222}
SUITE=${KDPIPE_ARM64_SUITE:-bookworm}
MIRROR=${KDPIPE_ARM64_MIRROR:-http://deb.debian.org/debian}
KDPIPE=${KDPIPE:-}
WITH_EXECUTORCH=${KDPIPE_ARM64_EXECUTORCH:-0}   # 1: also executorch (+ the aarch64 torch wheel)
VENV=/opt/kdpipe-venv                            # inside the rootfs
REMOTE_PYTHON=$VENV/bin/python3

usage() {
    cat <<EOF
Usage: $PROG [--cache DIR] [--port PORT] COMMAND [ARGS...]

An emulated (qemu-user) Debian arm64 board reachable over ssh on 127.0.0.1, for
\`kdpipe bench --device ssh://root@127.0.0.1:PORT\`. Latencies measured on it are NOT
representative of real arm64 hardware; accuracy and parity are.

Commands:
  build             build the rootfs once into the cache (debootstrap --foreign + second stage
                    under qemu-aarch64-static; python3, python3-venv, openssh-server; a venv at
                    $VENV with the aarch64 wheels of numpy, onnxruntime and
                    ai-edge-litert (the versions of this checkout's .venv) [+ executorch
                    with KDPIPE_ARM64_EXECUTORCH=1]); a no-op when already built
  binfmt            make this machine run aarch64 binaries: mount binfmt_misc if it is not,
                    register qemu-aarch64 (update-binfmts --enable, else the register file
                    with qemu-aarch64-static) and enable it; 'build' and 'start' do it too
  start             build if needed, then start the board's sshd on 127.0.0.1:PORT
  stop              stop the sshd and unmount /proc and /sys in the rootfs
  status            say whether the board is built and running
  flags             print the kdpipe bench flags that reach the board (for your own commands)
  bench FILES... [-- KDPIPE_BENCH_ARGS...]
                    start the board if needed and run kdpipe bench on FILES there
                    (defaults: --runtimes onnxruntime,litert,executorch --batch-sizes 1
                    --threads 1 --warmup 3 --iters 10 --min-time-s 0 --remote-accuracy 500
                    --limit-test 500 --no-memory;
                    anything after -- is passed on to kdpipe bench and overrides them)
  shell [CMD...]    a shell (or CMD) inside the rootfs, for debugging
  destroy           stop and delete the whole cache folder

Options / environment:
  --cache DIR       cache folder (KDPIPE_ARM64_CACHE; default ~/.cache/kdpipe/arm64-board).
                    Never inside a git repository.
  --port PORT       sshd port on 127.0.0.1 (KDPIPE_ARM64_PORT; default 2222)
  KDPIPE            the kdpipe command for 'bench' (default: .venv/bin/kdpipe of this checkout,
                    else kdpipe on PATH)
  KDPIPE_ARM64_SUITE, KDPIPE_ARM64_MIRROR   Debian suite and mirror (bookworm, deb.debian.org)
  KDPIPE_ARM64_PACKAGES   pip requirements of the device venv (default: numpy==V
                    onnxruntime==V ai-edge-litert==V, V from .venv: the board runs the same
                    runtime versions as this machine). Wheels are downloaded by this machine's
                    pip (HOST_PYTHON, else python3) for aarch64, installed offline.
  KDPIPE_ARM64_EXECUTORCH=1   also install executorch (its aarch64 wheel pulls the ~450 MB
                    aarch64 torch wheel; the runner needs torch for ExecuTorch files)

Needs root, qemu-user-static, binfmt-support, debootstrap and the OpenSSH client on this
machine (apt-get install qemu-user-static binfmt-support debootstrap openssh-client), and
network access to the Debian mirror and PyPI during 'build'. The test suite uses a prepared
board when KDPIPE_ARM64_ROOTFS names the cache folder (tests/test_arm64_board.py).
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }
log() { echo "[$PROG $(date +%H:%M:%S)] $*" >&2; }

ARGS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --cache) CACHE=$2; shift 2 ;;
        --cache=*) CACHE=${1#*=}; shift ;;
        --port) PORT=$2; shift 2 ;;
        --port=*) PORT=${1#*=}; shift ;;
        *) ARGS+=("$@"); break ;;
    esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
[[ $# -gt 0 ]] || { usage >&2; exit 2; }
COMMAND=$1; shift

CACHE=$(realpath -m "$CACHE")
ROOT=$CACHE/rootfs
KEYS=$CACHE/keys
KEY=$KEYS/id_ed25519
KNOWN_HOSTS=$CACHE/known_hosts
PIDFILE=$CACHE/sshd.pid
LOGFILE=$CACHE/sshd.log
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)

refuse_repo_cache() {
    local top
    top=$(git -C "$(dirname "$CACHE")" rev-parse --show-toplevel 2>/dev/null || true)
    if [[ -z $top ]]; then
        local d; d=$(dirname "$CACHE")
        while [[ ! -d $d ]]; do d=$(dirname "$d"); done
        top=$(git -C "$d" rev-parse --show-toplevel 2>/dev/null || true)
    fi
    [[ -z $top ]] || die "the cache $CACHE is inside the git repository $top; name a folder " \
        "outside it (--cache DIR or KDPIPE_ARM64_CACHE)"
}

need_root() { [[ $(id -u) -eq 0 ]] || die "$COMMAND needs root (debootstrap, chroot, mount)"; }

BINFMT=/proc/sys/fs/binfmt_misc
# qemu-user-static's aarch64 ELF entry (the magic and mask binfmt-support registers). Flag F: the
# kernel opens the interpreter at registration, so it also runs inside the chroot.
AARCH64_MAGIC='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
AARCH64_MASK='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'

# Makes this machine run aarch64 binaries: binfmt_misc mounted and on, a qemu-aarch64 entry
# registered and enabled. A fresh container or a reboot may have none of these.
check_binfmt() {
    local entry=$BINFMT/qemu-aarch64 qemu
    if [[ ! -e $BINFMT/register ]]; then
        log "mounting binfmt_misc on $BINFMT"
        mount -t binfmt_misc binfmt_misc "$BINFMT" || die "cannot mount binfmt_misc on " \
            "$BINFMT (needs root; a container needs the host's permission)"
    fi
    if [[ $(cat "$BINFMT/status") != enabled ]]; then
        log "enabling binfmt_misc"
        echo 1 > "$BINFMT/status"
    fi
    if [[ ! -e $entry ]] && command -v update-binfmts >/dev/null; then
        log "registering qemu-aarch64: update-binfmts --enable qemu-aarch64"
        update-binfmts --enable qemu-aarch64 || true
    fi
    if [[ ! -e $entry ]]; then
        qemu=$(command -v qemu-aarch64-static) || die "binfmt_misc has no qemu-aarch64 entry " \
            "and qemu-aarch64-static is not installed (apt-get install qemu-user-static)"
        log "registering $qemu for aarch64 ELF binaries in $BINFMT/register"
        printf ':qemu-aarch64:M::%s:%s:%s:F' "$AARCH64_MAGIC" "$AARCH64_MASK" "$qemu" \
            > "$BINFMT/register" || die "registering qemu-aarch64 in $BINFMT/register failed"
    fi
    if ! grep -qx enabled "$entry"; then
        log "enabling the disabled qemu-aarch64 entry"
        echo 1 > "$entry"
    fi
    grep -qx enabled "$entry" || die "the qemu-aarch64 binfmt entry stays disabled"
}

mounted() { mountpoint -q "$1" 2>/dev/null; }

# /proc for the runner (cpuinfo, VmHWM). /sys stays unmounted on purpose: the host's x86 sysfs
# makes the aarch64 onnxruntime's cpuinfo crash at import (SIGSEGV under qemu); without it
# onnxruntime only warns "cpuinfo_initialize failed" on stderr and runs.
mount_proc() {
    mkdir -p "$ROOT/proc"
    mounted "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
}

umount_proc() {
    local m
    for m in "$ROOT/sys" "$ROOT/proc"; do
        if mounted "$m"; then umount "$m" || umount -l "$m"; fi
    done
}

in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# ----------------------------------------------------------------------------- build

build_rootfs() {
    [[ -f $CACHE/.rootfs-done ]] && return
    for tool in debootstrap qemu-aarch64-static chroot; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install debootstrap " \
            "qemu-user-static binfmt-support)"
    done
    log "debootstrap $SUITE arm64 (first stage) into $ROOT"
    if [[ -d $ROOT ]]; then umount_proc; rm -rf --one-file-system "$ROOT"; fi
    mkdir -p "$ROOT"
    debootstrap --arch=arm64 --variant=minbase --foreign \
        --include=python3,python3-venv,openssh-server,ca-certificates \
        "$SUITE" "$ROOT" "$MIRROR"
    # binfmt's F flag already makes the host's interpreter available in the chroot; the copy
    # keeps the rootfs usable where the entry was registered without it.
    install -m 0755 "$(command -v qemu-aarch64-static)" "$ROOT/usr/bin/qemu-aarch64-static"
    # Never start services while packages are configured (the chroot shares this machine's
    # network: an sshd started by a postinst would listen on port 22 here).
    printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    log "debootstrap second stage (emulated; several minutes)"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage
    umount_proc
    touch "$CACHE/.rootfs-done"
}

# NAME==VERSION of each distribution as installed in this checkout's venv (the bare name where
# it is not), so the board runs the versions this machine's numbers come from.
venv_pins() {
    local py=$REPO/.venv/bin/python pins=""
    if [[ -x $py ]]; then
        pins=$("$py" - "$@" <<'PY' 2>/dev/null || true
import importlib.metadata as md
import sys
out = []
for name in sys.argv[1:]:
    try:
        out.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        out.append(name)
print(" ".join(out))
PY
)
    fi
    echo "${pins:-$*}"
}

default_packages() { venv_pins numpy onnxruntime ai-edge-litert; }

host_pip() {
    local py
    for py in "${HOST_PYTHON:-}" python3 "$REPO/.venv/bin/python"; do
        [[ -n $py ]] && "$py" -m pip --version >/dev/null 2>&1 && { echo "$py"; return; }
    done
    return 1
}

build_venv() {
    local want=${KDPIPE_ARM64_PACKAGES:-$(default_packages)}
    if [[ $WITH_EXECUTORCH == 1 ]]; then
        # The executorch wheel does not require torch, but the runner imports it for .pte files.
        want="$want $(venv_pins executorch torch)"
        log "KDPIPE_ARM64_EXECUTORCH=1: executorch's runner needs torch; PyPI's aarch64 torch " \
            "wheel is the CUDA build (its nvidia-* dependencies are several GB)"
    fi
    if [[ -f $CACHE/.venv-done ]] && [[ $(cat "$CACHE/.venv-done") == "$want" ]]; then return; fi
    mount_proc
    trap umount_proc EXIT
    local pyver
    pyver=$(in_root python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
    [[ -x $ROOT$VENV/bin/python3 ]] || in_root python3 -m venv "$VENV"
    local py wheels=$CACHE/wheels
    if py=$(host_pip); then
        # Download natively on this machine (its pip settings, proxy and CA bundle apply): the
        # aarch64 wheels for the rootfs's CPython; then install them offline in the rootfs.
        log "downloading aarch64 cp$pyver wheels on this machine: $want"
        local plat=(--platform linux_aarch64 --platform manylinux2014_aarch64) v
        for v in $(seq 17 40); do plat+=(--platform "manylinux_2_${v}_aarch64"); done
        mkdir -p "$wheels"
        # shellcheck disable=SC2086
        "$py" -m pip download --disable-pip-version-check --only-binary=:all: "${plat[@]}" \
            --python-version "$pyver" --implementation cp --abi "cp$pyver" -d "$wheels" $want
        rm -rf "$ROOT/tmp/kdpipe-wheels"; cp -r "$wheels" "$ROOT/tmp/kdpipe-wheels"
        log "installing them in the device venv $VENV (emulated)"
        # shellcheck disable=SC2086
        in_root "$VENV/bin/python3" -m pip install --disable-pip-version-check --no-cache-dir \
            --no-index --find-links /tmp/kdpipe-wheels --progress-bar off $want
        rm -rf "$ROOT/tmp/kdpipe-wheels"
    else
        # No pip here: the rootfs's pip downloads itself (trusting this machine's CA bundle,
        # for networks that intercept TLS).
        local cert=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
        cp -L "$cert" "$ROOT/etc/ssl/certs/kdpipe-host-ca.crt"
        cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
        log "device venv $VENV: pip install $want (emulated, from PyPI)"
        # shellcheck disable=SC2086
        in_root "$VENV/bin/python3" -m pip install --disable-pip-version-check --no-cache-dir \
            --cert /etc/ssl/certs/kdpipe-host-ca.crt --only-binary=:all: --progress-bar off $want
    fi
    # `python3` on the ssh PATH is the venv's, so kdpipe's default --remote-python works too.
    printf '#!/bin/sh\nexec %s "$@"\n' "$REMOTE_PYTHON" > "$ROOT/usr/local/bin/python3"
    chmod 0755 "$ROOT/usr/local/bin/python3"
    # Tells whoever logs in (and kdpipe's probe, should it look) that this board is emulated.
    echo "qemu-user emulation of aarch64 on $(uname -m): latency not representative" \
        > "$ROOT/etc/kdpipe-emulated"
    in_root "$VENV/bin/python3" -c 'import importlib.metadata as md, platform, numpy, onnxruntime
from ai_edge_litert.interpreter import Interpreter
names = ("numpy", "onnxruntime", "ai-edge-litert")
print(platform.machine(), *(f"{n} {md.version(n)}" for n in names))'
    umount_proc; trap - EXIT
    echo "$want" > "$CACHE/.venv-done"
}

build_keys() {
    mkdir -p "$KEYS"; chmod 0700 "$KEYS"
    [[ -f $KEY ]] || ssh-keygen -q -N "" -t ed25519 -C kdpipe-arm64-board -f "$KEY"
    [[ -f $ROOT/etc/ssh/kdpipe_host_ed25519 ]] || \
        ssh-keygen -q -N "" -t ed25519 -C kdpipe-arm64-host -f "$ROOT/etc/ssh/kdpipe_host_ed25519"
    install -d -m 0700 "$ROOT/root/.ssh"
    install -m 0600 "$KEY.pub" "$ROOT/root/.ssh/authorized_keys"
    # Known host written here, so the first connection needs no accept-new and a rebuilt board
    # (new host key) never trips a stale entry in ~/.ssh/known_hosts.
    local pub; pub=$(cut -d' ' -f1,2 "$ROOT/etc/ssh/kdpipe_host_ed25519.pub")
    echo "[127.0.0.1]:$PORT $pub" > "$KNOWN_HOSTS"
    cat > "$ROOT/etc/ssh/sshd_config.kdpipe" <<EOF
# kdpipe's emulated board: loopback only, keys only, root by key.
ListenAddress 127.0.0.1
Port $PORT
HostKey /etc/ssh/kdpipe_host_ed25519
PidFile /run/kdpipe-sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
LoginGraceTime 120
EOF
}

cmd_build() {
    need_root; refuse_repo_cache; check_binfmt
    mkdir -p "$CACHE"
    local t0=$SECONDS
    build_rootfs
    build_venv
    build_keys
    log "board ready in $CACHE ($((SECONDS - t0)) s this run)"
}

# ----------------------------------------------------------------------------- run

cmd_start() {
    cmd_build
    if running; then
        log "sshd already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$(cat "$CACHE/sshd.port")"
        return
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "127.0.0.1:$PORT is taken by another program; pick one with --port"
    fi
    build_keys   # the port may have changed since the build
    mount_proc
    mkdir -p "$ROOT/run/sshd"; chmod 0755 "$ROOT/run/sshd"
    rm -f "$ROOT/run/kdpipe-sshd.pid"
    log "starting the board's sshd on 127.0.0.1:$PORT"
    in_root /usr/sbin/sshd -t -f /etc/ssh/sshd_config.kdpipe
    # -D -e: stays in the foreground here (so its pid is known), logs to the log file.
    setsid chroot "$ROOT" /usr/bin/env -i LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config.kdpipe </dev/null >>"$LOGFILE" 2>&1 &
    echo $! > "$PIDFILE"
    echo "$PORT" > "$CACHE/sshd.port"
    local i
    for i in $(seq 1 120); do
        if ssh "${SSH_OPTS[@]}" true 2>/dev/null; then
            log "board up: ssh://root@127.0.0.1:$PORT ($(ssh "${SSH_OPTS[@]}" uname -m))"
            return
        fi
        running || { tail -5 "$LOGFILE" >&2; die "sshd exited (log: $LOGFILE)"; }
        sleep 0.5
    done
    die "sshd did not answer on 127.0.0.1:$PORT within 60 s (log: $LOGFILE)"
}

cmd_stop() {
    if running; then
        local pid; pid=$(cat "$PIDFILE")
        log "stopping sshd (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE" "$CACHE/sshd.port"
    [[ -d $ROOT ]] && umount_proc
    return 0
}

cmd_status() {
    if [[ -f $CACHE/.rootfs-done && -f $CACHE/.venv-done ]]; then
        echo "built: $CACHE (venv: $(cat "$CACHE/.venv-done"))"
    else
        echo "not built: $CACHE"
    fi
    if running; then echo "running: ssh://root@127.0.0.1:$(cat "$CACHE/sshd.port") (pid $(cat "$PIDFILE"))"
    else echo "not running"; return 1; fi
}

kdpipe_flags() {
    FLAGS=(--device "ssh://root@127.0.0.1:$PORT" --ssh-key "$KEY"
           --ssh-options "UserKnownHostsFile=$KNOWN_HOSTS" --remote-python "$REMOTE_PYTHON")
}

cmd_flags() { kdpipe_flags; printf '%q ' "${FLAGS[@]}"; echo; }

cmd_bench() {
    local files=() extra=()
    while [[ $# -gt 0 ]]; do
        if [[ $1 == -- ]]; then shift; extra=("$@"); break; fi
        files+=("$1"); shift
    done
    [[ ${#files[@]} -gt 0 ]] || die "bench: name the artifacts (.onnx / .tflite / .pte files)"
    if [[ -z $KDPIPE ]]; then
        if [[ -x $REPO/.venv/bin/kdpipe ]]; then KDPIPE=$REPO/.venv/bin/kdpipe; else KDPIPE=kdpipe; fi
    fi
    cmd_start
    kdpipe_flags
    # --runtimes: the device runner's backends (the others run only on this machine and would
    # add a skipped row per file).
    local defaults=(--runtimes onnxruntime,litert,executorch --batch-sizes 1 --threads 1
                    --warmup 3 --iters 10 --min-time-s 0 --remote-accuracy 500 --limit-test 500
                    --no-memory)
    log "$KDPIPE bench ${files[*]} ${FLAGS[*]} ${defaults[*]} ${extra[*]:-}"
    "$KDPIPE" bench "${files[@]}" "${FLAGS[@]}" "${defaults[@]}" "${extra[@]+"${extra[@]}"}"
}

cmd_shell() {
    need_root
    [[ -f $CACHE/.rootfs-done ]] || die "not built: run $PROG build first"
    mount_proc
    if [[ $# -gt 0 ]]; then in_root "$@"; else in_root /bin/bash -l; fi
}

cmd_destroy() {
    cmd_stop
    refuse_repo_cache
    [[ -d $CACHE ]] || return 0
    mounted "$ROOT/proc" && die "$ROOT/proc is still mounted"
    mounted "$ROOT/sys" && die "$ROOT/sys is still mounted"
    log "removing $CACHE"
    rm -rf --one-file-system "$CACHE"
}

if [[ -f $CACHE/sshd.port ]] && running; then PORT=$(cat "$CACHE/sshd.port"); fi
SSH_OPTS=(-o BatchMode=yes -o ConnectTimeout=5 -o IdentitiesOnly=yes -i "$KEY"
          -o "UserKnownHostsFile=$KNOWN_HOSTS" -o StrictHostKeyChecking=yes -p "$PORT" root@127.0.0.1)

case $COMMAND in
    build) cmd_build ;;
    binfmt) need_root; check_binfmt ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    flags) cmd_flags ;;
    bench) cmd_bench "$@" ;;
    shell) cmd_shell "$@" ;;
    destroy) cmd_destroy ;;
    *) usage >&2; die "unknown command $COMMAND" ;;
esac
