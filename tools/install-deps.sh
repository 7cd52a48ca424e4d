#!/usr/bin/env bash
# Install the Debian packages this project builds, tests and demos with.
# Idempotent; needs root.  Works on a stock Debian 12 (bookworm) or 13 (trixie),
# whatever form apt's sources take (deb822 only, as in Debian's official images,
# one-line sources.list only, or both).
#   Debian 13: Suricata 7 from the main suite.
#   Debian 12: Suricata 7 from bookworm-backports (main has 6); the suite is added
#              to apt's sources (deb822, the host's own mirror) when it is missing.
#
#   tools/install-deps.sh            build + test tools + Suricata
#   tools/install-deps.sh --docker   also the Docker engine and compose
#
# Every failure ends with one line saying what failed and what to do.
set -Eeuo pipefail

here=$(cd "$(dirname "$0")" && pwd)
step="starting"
fail() { printf 'install-deps: %s\n' "$*" >&2; exit 1; }
# No `set -e` exit without a message: whatever command fails, say which step it was.
trap 'rc=$?; printf "install-deps: failed while %s (exit %s: %s)\n" "$step" "$rc" "$BASH_COMMAND" >&2; exit $rc' ERR

[ "$(id -u)" = 0 ] || fail "must run as root (it calls apt-get); try: sudo $0 $*"
command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: this installer supports Debian 12 and 13 only"
export DEBIAN_FRONTEND=noninteractive
# shellcheck source=tools/lib/apt-sources.sh
. "$here/lib/apt-sources.sh"

step="reading /etc/os-release"
codename=$( (. /etc/os-release && echo "${VERSION_CODENAME:-}") 2>/dev/null || true)
case "$codename" in
    bookworm) suricata_suite=bookworm-backports ;;
    trixie|forky|sid) suricata_suite="" ;;   # Suricata 7+ in main
    "") fail "cannot tell the Debian release (no VERSION_CODENAME in /etc/os-release); supported: Debian 12 (bookworm), 13 (trixie)" ;;
    *) fail "unsupported release '$codename'; supported: Debian 12 (bookworm), 13 (trixie)" ;;
esac

PACKAGES=(
  gcc make python3-dev python3-venv pkg-config
  libnetfilter-log1 libnetfilter-log-dev libpcap-dev
  iptables iproute2 tcpdump tshark procps ca-certificates
)

missing=()
for p in "${PACKAGES[@]}" suricata; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]} (Debian $codename)"
  if [ -n "$suricata_suite" ] && ! apt_has_suite "$suricata_suite"; then
    step="adding $suricata_suite to apt's sources"
    mirror=$(apt_mirror "$codename")
    cat > /etc/apt/sources.list.d/nflog-pipe-backports.sources <<SRC
# added by nflog-zmq-pcap-pipe's tools/install-deps.sh: Suricata 7 for Debian 12
Types: deb
URIs: ${mirror}
Suites: ${suricata_suite}
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    echo "install-deps: added $suricata_suite ($mirror) in /etc/apt/sources.list.d/nflog-pipe-backports.sources"
  fi
  step="running apt-get update"
  apt-get update -q || fail "apt-get update failed: check apt's sources and the network to the Debian mirror, then run again"
  # tshark asks whether non-root users may capture: answer no, quietly
  step="preseeding wireshark-common"
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  step="installing ${PACKAGES[*]}"
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" ||
    fail "apt-get install of the build and test packages failed (see apt's message above); run again after fixing it"
  step="installing suricata"
  apt-get install -y -q --no-install-recommends ${suricata_suite:+-t "$suricata_suite"} suricata ||
    fail "apt-get install suricata${suricata_suite:+ -t $suricata_suite} failed (see apt's message above)"
fi
step="checking Suricata"
suricata -V >/dev/null 2>&1 || fail "suricata is installed but 'suricata -V' fails; reinstall it (apt-get install --reinstall suricata)"

if [ "${1:-}" = "--docker" ]; then
  step="setting up the Docker engine (tools/docker/ensure-engine.sh)"
  "$here/docker/ensure-engine.sh"
fi
