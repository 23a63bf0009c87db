#!/bin/sh
# upparat install hook (RAUC-style example): installs the downloaded bundle.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none), $4 the downloaded file.
# Every stdout line (RAUC's progress: " 40% Copying image to rootfs.1") is reported
# as install progress. Exit 0: installed; exit 3: not now (while the lock file
# /run/upparat/install.lock exists, e.g. during a critical operation); else: failed.
# Demo mode: with UPPARAT_DEMO_ROOT set, the lock file is under $UPPARAT_DEMO_ROOT and
# ./fake-rauc stands in for rauc.
set -eu

root=${UPPARAT_DEMO_ROOT:-}
bundle=${4:?install hook needs the bundle path as \$4}

if [ -e "$root/run/upparat/install.lock" ]; then
    echo "a critical operation is running: installing later"
    echo "retry-after=60"
    exit 3
fi

if [ -n "$root" ]; then
    rauc="$(dirname "$0")/fake-rauc"
else
    rauc=rauc
fi

# Exit 1 on any rauc failure, so that rauc's own status cannot read as 3 (retry later).
"$rauc" install "$bundle" || {
    echo "rauc install failed with status $?" >&2
    exit 1
}
