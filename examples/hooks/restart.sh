#!/bin/sh
# upparat restart hook (RAUC example): reboots into the slot RAUC just installed.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none), $4 "True" if the job forces
# the update, else empty.
# Unless forced, waits (exit 3) while the flag file busy in $FLAG_DIR (default
# /run/upparat) says the device is in use. The daemon saved its state before calling
# this; after the reboot it checks the version and calls the ready hook.
set -eu

flags=${FLAG_DIR:-/run/upparat}

if [ "${4:-}" != "True" ] && [ -e "$flags/busy" ]; then
    echo "device busy: restarting later"
    echo "retry-after=120"
    exit 3
fi

echo "rebooting"
systemctl reboot
# systemctl only asks systemd to reboot. Returning would tell the daemon "restarted and
# still running" (a soft restart): it would check the version before the reboot. So wait
# here until the reboot stops the hook server, and this script with it.
sleep 600
echo "no reboot after 10 minutes"
exit 1
