# common.sh - shared host-side helpers for the VM test scripts (sourced, not run).
# Sets REPO_ROOT, MB_VM_WORK, KVER, MB_VM_MODROOT and provides die/need.
# MB_VM_MODROOT (default empty = the host) is a directory holding
# lib/modules/$KVER and boot/vmlinuz-$KVER of a kernel that is not installed
# (tests/vm/fetch-kernel-6.12.sh prepares one); KVER must then be set too.

REPO_ROOT=${REPO_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
MB_VM_WORK=${MB_VM_WORK:-$REPO_ROOT/build/vm}
case $MB_VM_WORK in /*) ;; *) MB_VM_WORK=$REPO_ROOT/$MB_VM_WORK ;; esac

die() { echo "ERROR: $*" >&2; exit 1; }

# need TOOL PACKAGE: fail (never skip) when a required tool is missing.
need() {
	command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] ||
		die "required tool '$1' not found: install the Debian package '$2'"
}

# Newest 6.1 kernel with a full module tree and a matching /boot/vmlinuz.
pick_kver() {
	best=
	for d in /lib/modules/6.1*; do
		[ -d "$d/kernel" ] || continue
		v=${d##*/}
		[ -f "/boot/vmlinuz-$v" ] || continue
		best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -n1)
	done
	[ -n "$best" ] || die "no /lib/modules/6.1*/kernel with matching /boot/vmlinuz-*: install the Debian package 'linux-image-amd64'"
	echo "$best"
}

MB_VM_MODROOT=${MB_VM_MODROOT:-}
if [ -n "$MB_VM_MODROOT" ]; then
	[ -n "${KVER:-}" ] || die "MB_VM_MODROOT=$MB_VM_MODROOT needs KVER"
	[ -d "$MB_VM_MODROOT/lib/modules/$KVER/kernel" ] || die "$MB_VM_MODROOT/lib/modules/$KVER/kernel missing (run tests/vm/fetch-kernel-6.12.sh)"
fi
KVER=${KVER:-$(pick_kver)}
[ -d "$MB_VM_MODROOT/lib/modules/$KVER/kernel" ] || die "/lib/modules/$KVER/kernel missing: install 'linux-image-amd64' (or set KVER)"
