#!/bin/sh
# build.sh - build modbroker's test kernel modules (mb_fail, mb_ok, mb_ok2,
# mb_base, mb_user, mb_slow) for $KVER.  Sources are copied to $MB_VM_WORK/modules and
# built there so the source tree stays clean; the .ko files end up in
# $MB_VM_WORK/modules/.
set -eu
. "$(dirname "$0")/../vm/common.sh"

need make make
need gcc gcc
[ -f "/lib/modules/$KVER/build/Makefile" ] ||
	die "/lib/modules/$KVER/build missing: install 'linux-headers-amd64' (headers for $KVER)"

src=$REPO_ROOT/tests/modules
out=$MB_VM_WORK/modules
mkdir -p "$out"
for f in "$src"/*.c "$src"/Kbuild; do
	cmp -s "$f" "$out/${f##*/}" || cp "$f" "$out/"
done
make -s -C "/lib/modules/$KVER/build" M="$out" modules >&2
for m in mb_fail mb_ok mb_ok2 mb_base mb_user mb_slow; do
	[ -f "$out/$m.ko" ] || die "module $m.ko was not built"
done
echo "$out"
