#!/usr/bin/env bash
# Install the Debian packages this project builds, tests and demos with.
# Idempotent; needs root.  Suricata comes from bookworm-backports (Debian 12
# has no Suricata 7 in main); the suite is added to apt's sources if missing.
#   tools/install-deps.sh            build + test tools + Suricata
#   tools/install-deps.sh --docker   also the Docker engine and compose
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: must run as root (apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
  gcc make python3-dev python3-venv pkg-config
  libnetfilter-log1 libnetfilter-log-dev libpcap-dev
  iptables iproute2 tcpdump tshark procps
)

missing=()
for p in "${PACKAGES[@]}" suricata; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  if ! grep -rqs -- "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    mirror=$(grep -rhs -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
      | grep -v security | head -n1 | sed -E 's/^URIs: *//; s/^deb (\[[^]]*\] )?//; s/ .*//')
    mirror=${mirror:-http://deb.debian.org/debian}
    cat > /etc/apt/sources.list.d/nflog-pipe-backports.sources <<SRC
Types: deb
URIs: ${mirror}
Suites: ${codename}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  apt-get update -q
  # tshark asks whether non-root users may capture: answer no, quietly
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
  apt-get install -y -q --no-install-recommends -t "${codename}-backports" suricata
fi

if [ "${1:-}" = "--docker" ]; then
  "$(dirname "$0")/docker/ensure-engine.sh"
fi
