#!/bin/sh
# upparat version hook (RAUC-style example): prints the installed version.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none).
# Prints VERSION_ID of /etc/os-release: on a RAUC system the image that RAUC booted
# carries its own os-release, so this is the version of the booted slot. (Where the
# bundle version is the truth instead, read it from `rauc status --output-format=shell`,
# the RAUC_SLOT_STATUS_BUNDLE_VERSION_<n> of the booted slot.)
# Demo mode: with UPPARAT_DEMO_ROOT set, reads $UPPARAT_DEMO_ROOT/etc/os-release.
set -eu

root=${UPPARAT_DEMO_ROOT:-}
os_release=$root/etc/os-release

if [ ! -r "$os_release" ]; then
    echo "cannot read $os_release" >&2
    exit 1
fi
version=$(sed -n 's/^VERSION_ID=//p' "$os_release" | tr -d "\"'")
if [ -z "$version" ]; then
    echo "no VERSION_ID in $os_release" >&2
    exit 1
fi
# The last line on stdout is the version.
echo "$version"
