#!/bin/sh
# upparat ready hook (RAUC-style example): is the system up and the update good?
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none).
# Exit 3 (ask again) while systemd is still starting; exit 1 if the system came up
# degraded or worse; else mark the booted RAUC slot good and exit 0.
# Demo mode: with UPPARAT_DEMO_ROOT set, "starting" while the flag file
# $UPPARAT_DEMO_ROOT/run/upparat/not-ready exists, and ./fake-rauc marks the slot.
set -eu

root=${UPPARAT_DEMO_ROOT:-}

if [ -n "$root" ]; then
    rauc="$(dirname "$0")/fake-rauc"
    if [ -e "$root/run/upparat/not-ready" ]; then state=starting; else state=running; fi
else
    rauc=rauc
    state=$(systemctl is-system-running || true)
fi

case $state in
    running)
        ;;
    initializing | starting)
        echo "system is $state"
        echo "retry-after=10"
        exit 3
        ;;
    *)
        echo "system is $state" >&2
        exit 1
        ;;
esac

"$rauc" status mark-good
echo "system is up; slot marked good"
