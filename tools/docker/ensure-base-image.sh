#!/usr/bin/env bash
# ensure-base-image.sh [NAME] - make sure a Debian base image NAME
# (default debian:trixie-slim) exists in the local Docker engine.
#
#   1. image already present            -> nothing to do
#   2. `docker pull NAME` (short timeout) -> done if a registry answers
#   3. otherwise build it locally: debootstrap --variant=minbase SUITE ROOTFS MIRROR,
#      make it look like the official slim image (apt/dpkg settings, policy-rc.d,
#      deb822 sources pointing at the host's mirror), then
#      tar -C ROOTFS -c . | docker import - NAME
#
# The mirror is read from the host's own apt sources (deb822 *.sources or one-line
# sources.list), so `apt-get update && apt-get install ...` inside Dockerfiles
# reaches the same mirror the host uses. Host apt settings that apt needs to use
# that mirror (Acquire::Check-Valid-Until / Check-Date / http(s) proxy) are copied
# into the image's /etc/apt/apt.conf.d/90host-mirror.
#
# Run tools/docker/ensure-engine.sh first. Needs root. Idempotent; concurrent runs
# are serialised with a lock.
#
# Environment knobs (all optional):
#   BASE_IMAGE_SUITE         Debian suite          (default: taken from NAME's tag if it
#                            starts with a known codename, else bookworm)
#   BASE_IMAGE_MIRROR        Debian mirror URL     (default: from the host's apt sources)
#   BASE_IMAGE_SECURITY_MIRROR  security mirror    (default: from the host's apt sources)
#   BASE_IMAGE_PULL_TIMEOUT  seconds for docker pull (default 20; 0 = don't try)
#   BASE_IMAGE_FORCE=1       rebuild/re-import even if NAME exists
set -euo pipefail

NAME=${1:-debian:trixie-slim}
PULL_TIMEOUT=${BASE_IMAGE_PULL_TIMEOUT:-20}
FORCE=${BASE_IMAGE_FORCE:-0}
DOCKER=${DOCKER:-docker}
export DEBIAN_FRONTEND=noninteractive

log() { printf '[ensure-base-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
"$DOCKER" info >/dev/null 2>&1 || die "docker engine not reachable; run tools/docker/ensure-engine.sh first"

image_present() { "$DOCKER" image inspect "$NAME" >/dev/null 2>&1; }

if [ "$FORCE" != 1 ] && image_present; then
    log "$NAME already present"
    exit 0
fi

exec 9>/var/lock/ensure-base-image.lock
flock 9
if [ "$FORCE" != 1 ] && image_present; then   # built by a concurrent run
    log "$NAME already present"
    exit 0
fi

# ---------------------------------------------------------------- pull
if [ "$FORCE" != 1 ] && [ "$PULL_TIMEOUT" -gt 0 ]; then
    log "trying docker pull $NAME (timeout ${PULL_TIMEOUT}s)"
    if timeout "$PULL_TIMEOUT" "$DOCKER" pull -q "$NAME" >/dev/null 2>&1 && image_present; then
        log "pulled $NAME"
        exit 0
    fi
    log "pull failed; building $NAME locally with debootstrap"
fi

# ---------------------------------------------------------------- suite & mirrors
tag=${NAME##*:}; [ "$tag" != "$NAME" ] || tag=latest
if [ -n "${BASE_IMAGE_SUITE:-}" ]; then
    SUITE=$BASE_IMAGE_SUITE
else
    case "$tag" in
        bullseye*|bookworm*|trixie*|sid*) SUITE=${tag%%-*} ;;
        *) SUITE=bookworm ;;
    esac
fi

# the host's apt sources, deb822 or one-line (tools/lib/apt-sources.sh)
. "$(dirname "$0")/../lib/apt-sources.sh"
MIRROR=${BASE_IMAGE_MIRROR:-$(apt_mirror "$SUITE")}
MIRROR=${MIRROR%/}
SECURITY_MIRROR=${BASE_IMAGE_SECURITY_MIRROR:-$(apt_security_mirror)}
SECURITY_MIRROR=${SECURITY_MIRROR%/}
log "suite=$SUITE mirror=$MIRROR security=$SECURITY_MIRROR"

# ---------------------------------------------------------------- debootstrap
if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi

ROOTFS=$(mktemp -d /var/tmp/base-rootfs.XXXXXX)
cleanup() {
    # debootstrap may leave proc/sys mounted inside the rootfs on failure:
    # unmount everything below it before deleting anything.
    awk -v r="$ROOTFS" 'index($2, r"/") == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

keyring=()
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] &&
    keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)

t0=$(date +%s)
log "debootstrap --variant=minbase $SUITE $ROOTFS $MIRROR"
if ! debootstrap --variant=minbase "${keyring[@]}" "$SUITE" "$ROOTFS" "$MIRROR" \
        >"$ROOTFS.log" 2>&1; then
    tail -n 30 "$ROOTFS.log" >&2
    [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
    rm -f "$ROOTFS.log"
    die "debootstrap failed"
fi
rm -f "$ROOTFS.log"
log "debootstrap took $(( $(date +%s) - t0 ))s"

# ---------------------------------------------------------------- make it slim-like
R=$ROOTFS
# apt sources: deb822 like the official image, pointing at the host's mirror
rm -f "$R/etc/apt/sources.list"
apt_official_sources "$SUITE" "$MIRROR" "$SECURITY_MIRROR" > "$R/etc/apt/sources.list.d/debian.sources"

# host apt settings needed to use this mirror (e.g. a snapshot/proxy mirror whose
# Release files are past Valid-Until)
apt_host_settings > "$R/etc/apt/apt.conf.d/90host-mirror"

# the apt/dpkg tweaks of the official debian:*-slim images
cat > "$R/etc/apt/apt.conf.d/docker-clean" <<'X'
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
X
echo 'Acquire::GzipIndexes "true";'           > "$R/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Acquire::Languages "none";'             > "$R/etc/apt/apt.conf.d/docker-no-languages"
echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$R/etc/apt/apt.conf.d/docker-autoremove-suggests"
mkdir -p "$R/etc/dpkg/dpkg.cfg.d"
cat > "$R/etc/dpkg/dpkg.cfg.d/docker" <<'X'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
X
# apply those excludes to what debootstrap already installed
find "$R/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$R/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
find "$R/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
rm -rf "$R"/usr/share/man/* "$R"/usr/share/groff/* "$R"/usr/share/info/* \
       "$R"/usr/share/lintian/* "$R"/usr/share/linda/*
printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"
chmod 755 "$R/usr/sbin/policy-rc.d"

# drop caches, logs and per-host files (docker bind-mounts hosts/resolv.conf/hostname)
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb \
       "$R"/var/log/apt/* "$R"/var/log/dpkg.log "$R"/var/log/bootstrap.log "$R"/var/log/alternatives.log \
       "$R"/debootstrap "$R"/tmp/* "$R"/var/tmp/* "$R"/root/.bash_history
: > "$R/etc/resolv.conf" 2>/dev/null || true
: > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n' > "$R/etc/hosts"
[ -e "$R/etc/machine-id" ] && : > "$R/etc/machine-id"
# docker provides its own /dev, /proc, /sys
rm -rf "${R:?}"/dev/* "${R:?}"/proc/* "${R:?}"/sys/* 2>/dev/null || true

# ---------------------------------------------------------------- import
old_id=$("$DOCKER" image inspect -f '{{.Id}}' "$NAME" 2>/dev/null || true)
t0=$(date +%s)
log "importing rootfs as $NAME"
tar -C "$R" --numeric-owner --xattrs -c . |
    "$DOCKER" import --change 'CMD ["bash"]' -m "debootstrap --variant=minbase $SUITE $MIRROR" - "$NAME" >/dev/null
log "import took $(( $(date +%s) - t0 ))s"
image_present || die "import of $NAME failed"
# with BASE_IMAGE_FORCE=1: drop the replaced image unless something still uses it
if [ -n "$old_id" ] && [ "$old_id" != "$("$DOCKER" image inspect -f '{{.Id}}' "$NAME")" ]; then
    "$DOCKER" image rm "$old_id" >/dev/null 2>&1 || true
fi
log "built $NAME ($("$DOCKER" image inspect -f '{{.Size}}' "$NAME" | awk '{ printf "%.0f MB", $1/1e6 }'))"
