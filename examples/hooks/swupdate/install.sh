#!/bin/sh
# upparat install hook (SWUpdate example): installs the downloaded .swu with swupdate.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none), $4 the downloaded .swu.
# SWUpdate's messages become install progress lines; the last line is the result.
# Exit 0: installed. Exit 1: not installed, the last line is SWUpdate's reason
# ("Authentication of all signatures failed", "SW not compatible with hardware", ...).
# Exit 3: SWUpdate gave no verdict (see the end): the daemon calls again later.
set -eu

# --- settings: edit them here, or set them for the hook server
#     ([hookserver] environment = SWUPDATE_CERT=... SWUPDATE_HWREVISION=...)
# swupdate -k: the root CA that issued the certificate which signed sw-description
# (or that certificate itself if it is self-signed).
cert=${SWUPDATE_CERT:-/etc/swupdate/signing-ca.pem}
# This board as <board>:<revision>, checked against the bundle's hardware-compatibility
# (swupdate -H). Empty: read from /etc/hwrevision ("<board> <revision>").
hwrevision=${SWUPDATE_HWREVISION:-}
# More swupdate options, e.g. "-B uboot -e stable,copy2" (bootloader, image set).
options=${SWUPDATE_ARGS:-}
# ---

bundle=${4:?install hook needs the .swu path as \$4}

if [ -z "$hwrevision" ]; then
    if ! read -r board revision < /etc/hwrevision; then
        echo "no SWUPDATE_HWREVISION and no /etc/hwrevision: which board is this?"
        exit 1
    fi
    hwrevision=$board:$revision
fi

# A private TMPDIR: swupdate puts its control and progress sockets and its copies of
# the images there, so it never talks to a swupdate daemon running on the device.
work=$(mktemp -d "${TMPDIR:-/tmp}/upparat-swupdate.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 143' HUP INT TERM  # cancelled: still remove $work

# -l 1: SWUpdate's ERROR lines (the reasons) even where swupdate.cfg sets no loglevel
# (a later -l in $options wins). A pipeline's status is its last command's, so
# swupdate's goes to a file.
# shellcheck disable=SC2086 # $options holds several words
{ status=0
  TMPDIR=$work swupdate -l 1 -i "$bundle" -k "$cert" -H "$hwrevision" $options 2>&1 ||
      status=$?
  echo "$status" > "$work/status"; } |
while IFS= read -r line; do
    case $line in
    *"[ERROR]"*)
        # The first error is the cause, later ones its consequences.
        [ -e "$work/error" ] || printf '%s\n' "$line" > "$work/error"
        printf '%s\n' "$line" >&2 ;;  # the hook server keeps stderr's end as detail
    *"SWUPDATE successful"*)
        : > "$work/success"
        printf '%s\n' "${line#\[* : }" ;;
    "["*)
        printf '%s\n' "${line#\[* : }" ;;  # progress, without the "[INFO ] : " prefix
    *)
        [ -z "$line" ] || printf '%s\n' "$line" >&2 ;;  # banner, stray messages
    esac
done
status=$(cat "$work/status")

# SWUpdate 2022.12's exit status cannot be trusted alone: `swupdate -i` sometimes exits 1
# after "SWUPDATE successful" (every image written), or ends before the installer has
# said anything. So the verdict is SWUpdate's own messages: any ERROR is a failure, even
# with exit 0; success needs "SWUPDATE successful" and no ERROR.
if [ -e "$work/error" ]; then
    reason=$(sed -e 's/^.*SWUPDATE failed \[[0-9]*\] //' -e 's/^ERROR : //' "$work/error")
    echo "swupdate failed: $reason"
    exit 1
fi
if [ -e "$work/success" ]; then
    if [ "$status" != 0 ]; then
        echo "swupdate exited with status $status after reporting success (ignored)"
    fi
    echo "swupdate installed $(basename "$bundle")"
    exit 0
fi
if [ "$status" = 1 ] && [ "${2:-0}" -lt 2 ]; then
    # No verdict at all: install again (an install is idempotent), twice at most.
    echo "swupdate exited with status 1 without a result: installing again"
    exit 3
fi
echo "swupdate exited with status $status without reporting success"
exit 1
