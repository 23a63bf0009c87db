#!/bin/sh
# Test hook: runs the job's meta ($3) as shell code, with upparat 1.12's arguments
# still in "$@". One server configured with this script for every hook serves most
# contract cases; each case sends the behaviour it needs as the meta.
eval "$3"
