#!/bin/sh
# upparat ready hook (RAUC example): is the new system up? Then keep it.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none).
# Exit 3 (ask again) while systemd is still starting; exit 1 if the system came up
# degraded or worse. Else mark the booted slot good and exit 0: until then the
# bootloader counts the new slot's boot attempts and, when they run out, boots the old
# slot again (RAUC's rollback). Add the checks your product needs before mark-good.
set -eu

state=$(systemctl is-system-running || true)
case $state in
    running)
        ;;
    initializing | starting)
        echo "system is $state"
        echo "retry-after=10"
        exit 3
        ;;
    *)
        echo "system is $state"
        exit 1
        ;;
esac

rauc status mark-good booted
