#!/bin/bash
# fetch-kernel-6.12.sh - fetch Debian's 6.12 kernel from bookworm-backports for
# the coldplug benchmark, WITHOUT installing it: the image package is
# downloaded with `apt-get download`, unpacked with `dpkg -x` into
# $MB_VM_WORK/kernel-6.12/root and indexed there with `depmod -b`, so the
# host's /boot and /lib/modules stay untouched.
#
# Usage: tests/vm/fetch-kernel-6.12.sh      (idempotent; needs root for apt)
# Prints, as its last line, the variables the VM scripts take:
#   KVER=... MB_VM_MODROOT=... MB_VM_KERNEL=...
# If bookworm-backports is not among the apt sources yet, it is added as
# /etc/apt/sources.list.d/bookworm-backports.sources with the same mirror
# (URIs) as the existing bookworm entry and component main.
set -eu
. "$(dirname "$0")/common.sh"

need apt-get apt
need dpkg dpkg
need depmod kmod

dest=$MB_VM_WORK/kernel-6.12
root=$dest/root

# Already unpacked and indexed?  Then only report it.
report() {
	for d in "$root"/lib/modules/6.12*; do
		v=${d##*/}
		if [ -s "$d/modules.dep" ] && [ -f "$root/boot/vmlinuz-$v" ]; then
			echo "KVER=$v MB_VM_MODROOT=$root MB_VM_KERNEL=$root/boot/vmlinuz-$v"
			return 0
		fi
	done
	return 1
}
report 2>/dev/null && exit 0

# --- apt source for bookworm-backports (same mirror as the bookworm entry)
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '$2 ~ /debian\/?$/ {print $2; exit}')
	if [ -z "$mirror" ]; then
		mirror=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	fi
	[ -n "$mirror" ] || die "no bookworm mirror found in /etc/apt/sources.list{,.d} to derive a bookworm-backports entry from"
	echo "adding bookworm-backports ($mirror) to /etc/apt/sources.list.d/bookworm-backports.sources" >&2
	cat >/etc/apt/sources.list.d/bookworm-backports.sources <<EOF
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
	apt-get update >&2 || die "apt-get update failed"
fi

# --- the 6.12 image package that backports' linux-image-amd64 depends on
# (the signed image; it holds vmlinuz and the whole module tree)
pick_pkg() {
	apt-cache show linux-image-amd64/bookworm-backports 2>/dev/null |
		sed -n 's/^Depends:.*\(linux-image-6\.12[^ ,]*-amd64\).*/\1/p' | head -n1
}
pkg=$(pick_pkg)
if [ -z "$pkg" ]; then
	apt-get update >&2 || die "apt-get update failed"
	pkg=$(pick_pkg)
fi
[ -n "$pkg" ] || die "linux-image-amd64/bookworm-backports does not depend on a linux-image-6.12*-amd64 package"

mkdir -p "$dest"
(cd "$dest" && rm -f ./*.deb && chmod 0777 . && apt-get download "$pkg/bookworm-backports" >&2) || die "apt-get download $pkg failed"
rm -rf "$root.tmp"
dpkg -x "$dest"/*.deb "$root.tmp"
# The package may use the merged-/usr layout; the VM scripts want lib/modules.
if [ ! -d "$root.tmp/lib/modules" ] && [ -d "$root.tmp/usr/lib/modules" ]; then
	mkdir -p "$root.tmp/lib" && ln -s ../usr/lib/modules "$root.tmp/lib/modules"
fi
# shellcheck disable=SC2012 # kernel release names; sort -V picks the newest
v=$(ls "$root.tmp/lib/modules" | sort -V | tail -n1)
[ -f "$root.tmp/boot/vmlinuz-$v" ] || die "$pkg has no boot/vmlinuz-$v"
depmod -b "$root.tmp" "$v" || die "depmod -b $root.tmp $v failed"
rm -rf "$root" && mv "$root.tmp" "$root"
report || die "unpacked $pkg but found no usable tree in $root"
