# Shared by the installers: read apt's sources whatever form they take.
# Source it; it defines functions only and never exits the caller.
#
#   apt_entries          print "URI<TAB>SUITE" for every enabled deb (not deb-src)
#                        entry: deb822 *.sources (Debian's official images keep only
#                        /etc/apt/sources.list.d/debian.sources) and one-line
#                        sources.list / *.list, any of them possibly missing
#   apt_mirror [SUITE]   the URI of the Debian mirror: the entry for SUITE if there
#                        is one, else any plain Debian suite's, else deb.debian.org
#   apt_has_suite SUITE  exit 0 when some enabled entry already uses SUITE
#   apt_security_mirror  the URI of the security suite's entry, else derived from the mirror
#   apt_host_settings    the host's apt settings a root built from its mirror needs too
#                        (Check-Valid-Until/Check-Date for snapshot mirrors, proxies),
#                        as an apt.conf fragment
#   apt_official_sources SUITE MIRROR SECURITY_MIRROR
#                        the deb822 debian.sources of Debian's official images
#
# APT_ROOT (default empty) is prepended to every path: the tests read made-up layouts.

apt_entries() {
    local f
    for f in "${APT_ROOT:-}"/etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: stanzas separated by blank lines; "Enabled: no" turns one off
        awk '
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no")
                    for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i] "\t" s[j]
                types = ""; enabled = ""; nu = 0; ns = 0
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:"   { types = $0; next }
            tolower($1) == "enabled:" { enabled = tolower($2); next }
            tolower($1) == "uris:"    { nu = 0; for (k = 2; k <= NF; k++) u[++nu] = $k; next }
            tolower($1) == "suites:"  { ns = 0; for (k = 2; k <= NF; k++) s[++ns] = $k; next }
            END { flush() }
        ' "$f" || true
    done
    for f in "${APT_ROOT:-}"/etc/apt/sources.list "${APT_ROOT:-}"/etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [opts] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2 "\t" $3 }' || true
    done
}

apt_mirror() {
    local entries uri
    entries=$(apt_entries)
    uri=$(printf '%s\n' "$entries" | awk -F'\t' -v s="${1:-}" 's != "" && $2 == s { print $1; exit }')
    [ -n "$uri" ] || uri=$(printf '%s\n' "$entries" |
        awk -F'\t' '$2 ~ /^(bullseye|bookworm|trixie|forky|sid|stable|testing|unstable)$/ { print $1; exit }')
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    printf '%s\n' "${uri%/}"
}

apt_has_suite() {
    apt_entries | awk -F'\t' -v s="$1" '$2 == s { found = 1 } END { exit !found }'
}

apt_security_mirror() {
    local uri
    uri=$(apt_entries | awk -F'\t' '$2 ~ /-security$/ { print $1; exit }')
    [ -n "$uri" ] || uri=$(apt_mirror)
    uri=${uri%/}
    case "$uri" in */debian-security) ;; */debian) uri=${uri%/debian}/debian-security ;; esac
    printf '%s\n' "$uri"
}

apt_host_settings() {
    local key val
    echo "// copied from the host's apt configuration (tools/lib/apt-sources.sh)"
    for key in Acquire::Check-Valid-Until Acquire::Check-Date Acquire::http::Proxy Acquire::https::Proxy; do
        val=$(apt-config dump "$key" 2>/dev/null |
              awk -v k="$key" '$1 == k { v = $0; sub(/^[^ ]+ /, "", v); sub(/;$/, "", v); print v; exit }')
        [ -z "$val" ] || printf '%s %s;\n' "$key" "$val"
    done
}

apt_official_sources() {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$2" "$1" "$1"
    if [ "$1" != sid ]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$3" "$1"
    fi
}
