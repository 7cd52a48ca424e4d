#!/bin/bash
# ids-run.sh FIFO COMMAND [ARG...]
#
# Runs an IDS (Suricata, Snort) that reads the pcap stream nflog-pcap-recv writes into
# FIFO. The entry point of the IDS images:
#   - waits until FIFO exists (the receiver creates it with --fifo-create);
#   - runs COMMAND, and runs it again whenever it exits: an IDS reading a FIFO ends when
#     the writer closes it (receiver restarted or replaced), and the receiver writes a
#     fresh pcap header to every new reader, so a new IDS run picks the stream up again;
#   - on SIGTERM/SIGINT stops the IDS with SIGTERM, then SIGKILL after IDS_STOP_GRACE
#     seconds (Suricata ignores SIGTERM while it waits in open() for a writer).
set -u

fifo=${1:?usage: ids-run.sh FIFO COMMAND [ARG...]}
shift
[ $# -gt 0 ] || { echo "ids-run: no IDS command given" >&2; exit 2; }
grace=${IDS_STOP_GRACE:-2}
restart_delay=${IDS_RESTART_DELAY:-1}
child=""

log() { printf '{"service": "ids-run", "level": "%s", "message": "%s"}\n' "$1" "$2" >&2; }

stop() {
    log INFO "stopping"
    if [ -n "$child" ] && kill -TERM "$child" 2>/dev/null; then
        local waited=0
        while kill -0 "$child" 2>/dev/null && [ "$waited" -lt $((grace * 10)) ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -KILL "$child" 2>/dev/null
        wait "$child" 2>/dev/null
    fi
    exit 0
}
trap stop TERM INT

while :; do
    if [ ! -p "$fifo" ]; then
        log INFO "waiting for the FIFO $fifo"
        until [ -p "$fifo" ]; do
            sleep 1 &
            wait $!
        done
    fi
    log INFO "starting: $*"
    "$@" &
    child=$!
    wait "$child"
    rc=$?
    child=""
    log INFO "IDS exited with status $rc (writer closed the FIFO?); restarting in ${restart_delay}s"
    sleep "$restart_delay" &
    wait $!
done
