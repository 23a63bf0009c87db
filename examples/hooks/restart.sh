#!/bin/sh
# upparat restart hook (RAUC-style example): boots into the freshly installed slot.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none), $4 "True" if the job forces
# the update, else empty.
# Unless forced, waits (exit 3) while the flag file /run/upparat/busy says the device
# is in use. The daemon saved its state before calling this; when the device is back
# it checks the version and calls the ready hook. `systemctl reboot` only asks systemd
# to reboot, so nothing of the reboot runs in this hook's process group (which the hook
# server kills once the hook exits).
# Demo mode: with UPPARAT_DEMO_ROOT set, ./fake-rauc "reboots" by making the installed
# slot's version the running one, and the hook exits 0 (a soft restart). When the flag
# file $UPPARAT_DEMO_ROOT/run/upparat/hard-reboot exists, the hook asks for a reboot
# instead (it writes run/reboot-requested) and blocks like a real reboot would, until
# the demo "power-cycles" the device (`make demo` does that).
set -eu

root=${UPPARAT_DEMO_ROOT:-}
force=${4:-}

if [ "$force" != "True" ] && [ -e "$root/run/upparat/busy" ]; then
    echo "device busy: restarting later"
    echo "retry-after=120"
    exit 3
fi

if [ -n "$root" ]; then
    if [ -e "$root/run/upparat/hard-reboot" ]; then
        echo "rebooting"
        : > "$root/run/reboot-requested"
        sleep 60
        exit 1  # still running: the reboot did not happen
    fi
    "$(dirname "$0")/fake-rauc" demo-reboot
    exit 0
fi
echo "rebooting"
systemctl reboot || reboot
