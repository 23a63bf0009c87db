#!/bin/sh
# upparat version hook (SWUpdate example): prints the version of the running software.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none).
# Reads SWUpdate's list of installed components, /etc/sw-versions ("<name> <version>"
# per line). Each image carries its own, written at build time, so after a reboot into
# the new image this prints the new version.
set -eu

# --- settings: edit them here, or set them for the hook server ([hookserver] environment)
versions=${SWUPDATE_VERSIONS:-/etc/sw-versions}
component=${SWUPDATE_COMPONENT:-rootfs}
# ---

if [ ! -r "$versions" ]; then
    echo "cannot read $versions" >&2
    exit 1
fi
version=$(awk -v name="$component" '$1 == name { print $2; exit }' "$versions")
if [ -z "$version" ]; then
    echo "no '$component' line in $versions" >&2
    exit 1
fi
# The last line on stdout is the version.
echo "$version"
