#!/usr/bin/env bash
# make check-fresh: the install, proven where it cannot drift.
#
#   tools/check-fresh.sh [RELEASE...]      (default: bookworm trixie; as root)
#
# For each release: a pristine root made by `debootstrap --variant=minbase`, laid out
# like Debian's official images (apt sources only in deb822 form, no sources.list),
# then, inside it as a new user would: `apt-get install git make`, `git clone` of this
# repository's committed HEAD, `make demo`. Passes only when Suricata's alerts show
# (IPv4 and IPv6). The root is a chroot whose / is a mount point (ip netns needs it),
# with /proc, /sys, /dev, /dev/pts bound and a tmpfs on /run, so namespaces, iptables
# NFLOG and the daemons run for real. Everything is unmounted and removed afterwards.
#
# Facts of these build machines, not of a user's, carried into the root: the host's
# local CA certificates (downloads go through the machine's trust store), the host's
# apt settings for its mirror, its resolv.conf, and the CA bundle variables pip reads.
#
# Environment: CHECK_FRESH_KEEP=1 keeps the roots (for a look after a failure);
# CHECK_FRESH_LOG_DIR (default /var/tmp) keeps each release's full log.
set -Eeuo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
step="starting"
say() { printf '[check-fresh] %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
trap 'rc=$?; say "FAILED while $step (exit $rc: $BASH_COMMAND)"; exit $rc' ERR

[ "$(id -u)" = 0 ] || fail "must run as root (debootstrap, chroot, mounts)"
# shellcheck source=tools/lib/apt-sources.sh
. "$here/lib/apt-sources.sh"
releases=("$@")
[ ${#releases[@]} -gt 0 ] || releases=(bookworm trixie)
log_dir=${CHECK_FRESH_LOG_DIR:-/var/tmp}
mkdir -p "$log_dir"

if ! command -v debootstrap >/dev/null 2>&1; then
    step="installing debootstrap"
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi
git -C "$repo" diff --quiet HEAD 2>/dev/null ||
    say "note: uncommitted changes are not tested: the root clones the committed HEAD"

mirror=$(apt_mirror)
security=$(apt_security_mirror)
keyring=()
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] &&
    keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)

ROOT=""
unmount_all() {  # everything mounted below $1, deepest first
    awk -v r="$1" 'index($2, r"/") == 1 || $2 == r { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
kill_inside() {  # any process still running inside the root (the demo cleans up; be sure)
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$1" ] && kill -9 "${p#/proc/}" 2>/dev/null
    done
    return 0
}
cleanup() {
    [ -n "$ROOT" ] || return 0
    kill_inside "$ROOT"
    unmount_all "$ROOT"
    if [ "${CHECK_FRESH_KEEP:-0}" = 1 ]; then say "kept $ROOT"; else rm -rf --one-file-system "$ROOT"; fi
    ROOT=""
}
trap cleanup EXIT

check_release() {
    local rel=$1 t0 t1 log
    t0=$(date +%s)
    log="$log_dir/check-fresh-$rel.log"
    ROOT=$(mktemp -d "/var/tmp/check-fresh-$rel.XXXXXX")
    chmod 0755 "$ROOT"                    # it becomes /: mktemp made it 0700
    say "$rel: debootstrap --variant=minbase $rel $ROOT $mirror"
    step="debootstrap of $rel (log: $log)"
    debootstrap --variant=minbase "${keyring[@]}" "$rel" "$ROOT" "$mirror" >"$log" 2>&1 ||
        { tail -n 20 "$log" >&2; fail "debootstrap $rel failed (log: $log)"; }

    step="laying out $rel like Debian's official image"
    rm -f "$ROOT/etc/apt/sources.list"
    apt_official_sources "$rel" "$mirror" "$security" > "$ROOT/etc/apt/sources.list.d/debian.sources"
    apt_host_settings > "$ROOT/etc/apt/apt.conf.d/90host-mirror"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] && cp "$crt" "$ROOT/usr/local/share/ca-certificates/"
    done

    step="mounting the root for namespaces and NFLOG"
    mount --bind "$ROOT" "$ROOT"          # ip netns needs / to be a mount point
    mount -t proc proc "$ROOT/proc"
    mount -t sysfs sysfs "$ROOT/sys"
    mount --bind /dev "$ROOT/dev"
    mount --bind /dev/pts "$ROOT/dev/pts"
    mount -t tmpfs -o mode=0755 tmpfs "$ROOT/run"
    mkdir -p "$ROOT/mnt/repo"
    mount --bind -o ro "$repo" "$ROOT/mnt/repo"

    say "$rel: apt-get install git make; git clone; make demo (log: $log)"
    step="running make demo in the $rel root (log: $log)"
    local script='
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q git make
update-ca-certificates >/dev/null 2>&1 || true
git config --global --add safe.directory /mnt/repo
git clone -q /mnt/repo /root/nflog-zmq-pcap-pipe
cd /root/nflog-zmq-pcap-pipe
make demo
'
    local ca=/etc/ssl/certs/ca-certificates.crt rc=0
    env -i HOME=/root TERM=dumb LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_CERT=$ca REQUESTS_CA_BUNDLE=$ca SSL_CERT_FILE=$ca PIP_DISABLE_PIP_VERSION_CHECK=1 \
        chroot "$ROOT" /bin/bash -c "$script" >>"$log" 2>&1 || rc=$?
    t1=$(date +%s)
    local alerts
    alerts=$(sed -n '/Suricata alerts/,/totals logged/p' "$log" | grep -cE '^    \[[0-9]+\] ' || true)
    if [ "$rc" != 0 ] || [ "$alerts" -lt 2 ]; then
        tail -n 40 "$log" >&2
        fail "$rel: make demo exited $rc with $alerts alert(s), 2 expected (log: $log)"
    fi
    grep -E '^    \[[0-9]+\] ' "$log" | sed "s/^/[check-fresh] $rel alert: /" >&2
    say "$rel: PASSED in $((t1 - t0)) s (debootstrap, apt, pip, demo; $alerts alerts)"
    cleanup
}

for rel in "${releases[@]}"; do
    check_release "$rel"
done
say "all passed: ${releases[*]}"
