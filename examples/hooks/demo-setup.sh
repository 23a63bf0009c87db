#!/bin/sh
# Prepares a fake device for the example hooks: demo-setup.sh DEMO_ROOT [VERSION]
#
# Creates DEMO_ROOT/etc/os-release (VERSION_ID=VERSION, default 1.0.0), the flag
# directory DEMO_ROOT/run/upparat and, in DEMO_ROOT/hooks, one wrapper per hook that
# runs the example hook with UPPARAT_DEMO_ROOT=DEMO_ROOT. The wrappers are needed
# because upparat-hookserver gives scripts a clean environment: they are the [hooks]
# paths of a demo config, and this prints those lines.
set -eu

root=${1:?usage: demo-setup.sh DEMO_ROOT [VERSION]}
version=${2:-1.0.0}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$root"
root=$(cd "$root" && pwd)

mkdir -p "$root/etc" "$root/run/upparat" "$root/var/lib/rauc" "$root/hooks"
printf 'NAME="upparat demo"\nVERSION_ID="%s"\n' "$version" > "$root/etc/os-release"

quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

echo "[hooks]"
for hook in version download install restart ready; do
    wrapper=$root/hooks/$hook
    {
        echo "#!/bin/sh"
        echo "UPPARAT_DEMO_ROOT=$(quote "$root") exec $(quote "$here/$hook.sh") \"\$@\""
    } > "$wrapper"
    chmod 755 "$wrapper"
    echo "$hook = $wrapper"
done
