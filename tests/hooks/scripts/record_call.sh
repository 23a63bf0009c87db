#!/bin/sh
# Test hook: records how the hook server ran it, into the directory named by $3
# (the job's meta): "args" (one argument a line), "env" (the environment) and
# "stdin" (what fd 0 is). Each file is renamed into place once complete.
out=$3
for arg in "$@"; do printf '%s\n' "$arg"; done > "$out/args.tmp"
env > "$out/env.tmp"
readlink "/proc/$$/fd/0" > "$out/stdin.tmp"
mv "$out/env.tmp" "$out/env"
mv "$out/stdin.tmp" "$out/stdin"
mv "$out/args.tmp" "$out/args"
echo "1.0.0"
