#!/bin/sh
# upparat download hook (example): may the download start now?
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none).
# Exit 0: download now. Exit 3: not now; a last line "retry-after=<seconds>" says when
# to ask again. Example policy: not while the link is metered, which something else on
# the device marks with the flag file /run/upparat/metered.
# Demo mode: with UPPARAT_DEMO_ROOT set, the flag is $UPPARAT_DEMO_ROOT/run/upparat/metered.
set -eu

root=${UPPARAT_DEMO_ROOT:-}

if [ -e "$root/run/upparat/metered" ]; then
    echo "link is metered: downloading later"
    echo "retry-after=300"
    exit 3
fi
echo "download allowed"
