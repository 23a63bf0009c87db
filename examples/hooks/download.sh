#!/bin/sh
# upparat download hook (example): may the download start now?
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none).
# Exit 0: download now. Exit 3: not now; a last line "retry-after=<seconds>" says when
# to ask again. Example policy: not while the link is metered, which something else on
# the device marks with the flag file metered in $FLAG_DIR (default /run/upparat).
set -eu

flags=${FLAG_DIR:-/run/upparat}

if [ -e "$flags/metered" ]; then
    echo "link is metered: downloading later"
    echo "retry-after=300"
    exit 3
fi
echo "download allowed"
