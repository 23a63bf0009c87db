#!/bin/sh
# upparat version hook (RAUC example): prints the version of the booted slot.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none).
# The version is the one of the bundle RAUC installed into the slot that is running:
# RAUC records it in its slot status (system.conf: [system] data-directory or statusfile).
# `rauc status --detailed --output-format=shell` prints it one variable a line,
# RAUC_SLOT_STATUS_BUNDLE_VERSION_<n> for slot <n>, and RAUC_SLOT_STATE_<n>='booted'
# says which <n> runs. sed reads that, so no JSON parser is needed (jq and python3 are
# often not on a device). With jq, the same from the JSON output:
#   rauc status --detailed --output-format=json |
#       jq -r '.slots[][] | select(.state == "booted") | .slot_status.bundle.version'
set -eu

status=$(rauc status --detailed --output-format=shell) || {
    echo "rauc status failed: is the RAUC service running?"
    exit 1
}
n=$(printf '%s\n' "$status" | sed -n "s/^RAUC_SLOT_STATE_\([0-9]*\)='booted'\$/\1/p")
version=$(printf '%s\n' "$status" |
    sed -n "s/^RAUC_SLOT_STATUS_BUNDLE_VERSION_${n:-none}='\(.*\)'\$/\1/p")

if [ -z "$version" ]; then
    # A slot flashed in the factory without `rauc install` has no RAUC record.
    echo "RAUC knows no bundle version for the booted slot"
    exit 1
fi
# The last line on stdout is the version.
echo "$version"
