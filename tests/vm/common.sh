# shellcheck shell=sh
# common.sh - shared host-side helpers for the VM test scripts (sourced, not run).
# Sets REPO_ROOT, MB_VM_WORK, KVER, MB_VM_MODROOT and provides die, need,
# use_kernel_612 and code_secs.
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

# code_secs NAME: N of `pub const NAME: Duration = Duration::from_secs(N);` in
# src/protocol.rs, so that a scenario's timing checks follow the code's
# constants; $MB_VM_NAME overrides it (for a tree that has no such constant).
code_secs() {
	v=$(printenv "MB_VM_$1" || true)
	[ -n "$v" ] || v=$(sed -n "s/^pub const $1: Duration = Duration::from_secs(\([0-9][0-9]*\));.*/\1/p" "$REPO_ROOT/src/protocol.rs")
	[ -n "$v" ] || die "no 'pub const $1: Duration = Duration::from_secs(N);' in src/protocol.rs (set MB_VM_$1=SECONDS to give it)"
	echo "$v"
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

# use_kernel_612: fetch Debian's 6.12 from bookworm-backports (once; never
# installed) and select it: exports KVER, MB_VM_MODROOT and MB_VM_KERNEL as
# fetch-kernel-6.12.sh prints them on its last line.
use_kernel_612() {
	line=$("$REPO_ROOT/tests/vm/fetch-kernel-6.12.sh" | tail -n1)
	case $line in KVER=*) ;; *) die "fetch-kernel-6.12.sh printed no KVER line" ;; esac
	for kv in $line; do export "${kv?}"; done
}

MB_VM_MODROOT=${MB_VM_MODROOT:-}
if [ -n "$MB_VM_MODROOT" ]; then
	[ -n "${KVER:-}" ] || die "MB_VM_MODROOT=$MB_VM_MODROOT needs KVER"
	[ -d "$MB_VM_MODROOT/lib/modules/$KVER/kernel" ] || die "$MB_VM_MODROOT/lib/modules/$KVER/kernel missing (run tests/vm/fetch-kernel-6.12.sh)"
fi
KVER=${KVER:-$(pick_kver)}
[ -d "$MB_VM_MODROOT/lib/modules/$KVER/kernel" ] || die "/lib/modules/$KVER/kernel missing: install 'linux-image-amd64' (or set KVER)"
