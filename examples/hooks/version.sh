#!/bin/sh
# upparat version hook (RAUC example): prints the version of the booted slot.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none).
# Also says which slot runs, for the cloud's $package shadow: the booted slot's bootname
# (RAUC_SYSTEM_BOOTED_BOOTNAME, the JSON's "booted"; A or B here) as the attribute
# booted_slot, a `booted_slot=A` line appended to the file upparat-hookserver names in
# $UPPARAT_ATTRIBUTES. Without that variable (upparat 1.12, a run by hand) it prints the
# version only.
# The version is the one of the bundle RAUC installed into the slot that is running:
# RAUC records it in its slot status (system.conf: [system] data-directory or statusfile).
# `rauc status --detailed --output-format=shell` prints it one variable a line,
# RAUC_SLOT_STATUS_BUNDLE_VERSION_<n> for slot <n>, and RAUC_SLOT_STATE_<n>='booted'
# says which <n> runs. sed reads that, so no JSON parser is needed (jq and python3 are
# often not on a device). With jq, the same from the JSON output:
#   rauc status --detailed --output-format=json |
#       jq -r '.slots[][] | select(.state == "booted") | .slot_status.bundle.version'
# and the booted slot: jq -r '.booted'
set -eu

# The value of NAME in rauc's shell output ($status), unquoted; empty if absent.
field() {
    printf '%s\n' "$status" | sed -n "s/^$1='\(.*\)'\$/\1/p"
}

status=$(rauc status --detailed --output-format=shell) || {
    echo "rauc status failed: is the RAUC service running?"
    exit 1
}
n=$(printf '%s\n' "$status" | sed -n "s/^RAUC_SLOT_STATE_\([0-9]*\)='booted'\$/\1/p")
version=$(field "RAUC_SLOT_STATUS_BUNDLE_VERSION_${n:-none}")

if [ -z "$version" ]; then
    # A slot flashed in the factory without `rauc install` has no RAUC record.
    echo "RAUC knows no bundle version for the booted slot"
    exit 1
fi
if [ -n "${UPPARAT_ATTRIBUTES:-}" ]; then
    # Attributes are extras: one RAUC cannot tell is left out, never a failure.
    bootname=$(field RAUC_SYSTEM_BOOTED_BOOTNAME)
    [ -n "$bootname" ] || bootname=$(field "RAUC_SLOT_BOOTNAME_$n")
    if [ -n "$bootname" ]; then
        echo "booted_slot=$bootname" >>"$UPPARAT_ATTRIBUTES" || true
    fi
fi
# The last line on stdout is the version.
echo "$version"
