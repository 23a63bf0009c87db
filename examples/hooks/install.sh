#!/bin/sh
# upparat install hook (RAUC example): installs the downloaded bundle.
#
# Arguments, as upparat 1.12 passed them: $1 whole seconds since the first call,
# $2 retries so far, $3 the job's meta (empty if none), $4 the downloaded file.
# `rauc install` hands the bundle to the RAUC service, which checks its signature
# against the keyring, writes the other slot and makes it the one to boot next. Its
# progress lines (" 40% Checking bundle done.") are reported as install progress; when
# it fails, its reason ("LastError: signature verification failed: ...") is the job's
# failure message. Running it again for the same job writes the slot again, so
# the hook is idempotent, as the daemon requires.
# Exit 3 (not now) while the lock file install.lock in $FLAG_DIR (default /run/upparat)
# exists, e.g. during a critical operation.
set -eu

flags=${FLAG_DIR:-/run/upparat}
bundle=${4:?install hook needs the bundle path as \$4}

if [ -e "$flags/install.lock" ]; then
    echo "a critical operation is running: installing later"
    echo "retry-after=60"
    exit 3
fi

# rauc's lines go on one by one, then its exit status. On a failure the reason (its
# "LastError: ..." line) is printed again as the last line, since rauc may print "idle"
# after it, and the hook exits 1, so that rauc's own status cannot read as 3.
{ status=0; rauc install "$bundle" || status=$?; echo "rauc-exit=$status"; } | {
    while IFS= read -r line; do
        case $line in
            rauc-exit=0) exit 0 ;;
            rauc-exit=*) echo "${reason:-rauc install failed with status ${line#*=}}"; exit 1 ;;
            LastError:*) reason=$line ;;
        esac
        echo "$line"
    done
    exit 1  # rauc's status never came
}
