#!/bin/bash
# build-initramfs.sh - build the gzip'd newc initramfs for modbroker's VM tests.
#
# Usage: tests/vm/build-initramfs.sh SCENARIO_FILE [OUTPUT]
# Contents: static busybox (+ applet symlinks), /init, /lib.sh, SCENARIO_FILE
# as /scenario.sh, the binaries $MODBROKERD and $MODBROKER (if set) with every
# shared library ldd lists and the dynamic loader (paths preserved), and a
# module tree /lib/modules/$KVER holding the modules in $MB_VM_MODULES plus
# their modules.dep dependencies and softdeps (as `modprobe -D` resolves them),
# modules.builtin*, modules.order, and the test modules under extra/, indexed
# by a real `depmod -b` run on the staging root.
# The modules come from $MB_VM_MODROOT/lib/modules/$KVER (default the
# host's).  The test modules are only built for the host's kernel: with
# MB_VM_MODROOT set (another kernel, e.g. 6.12 from fetch-kernel-6.12.sh)
# the image has none.
# MB_VM_MODULES=all instead puts the kernel's whole module tree in, without
# test modules.
# MB_VM_UDEV=1 adds the host's udev: systemd-udevd, udevadm, the helpers in
# /lib/udev, rules.d, hwdb.bin, /etc/udev, kmod as /sbin/modprobe with
# modprobe.d, and udev/80-drivers.rules as /usr/share/modbroker/ (not active;
# the coldplug scenario installs it in broker mode).
# MB_VM_COMPRESS: gzip (default), zstd, lz4 or none.
# Env: KVER, MB_VM_WORK, MODBROKERD, MODBROKER, MB_VM_MODULES, MB_TEST_MODULES_DIR,
#      MB_VM_MODROOT, MB_VM_UDEV, MB_VM_COMPRESS,
#      MB_VM_EXTRA_BINS (extra binaries: SRC or SRC=DEST, with their libraries;
#      default the scenario's "# extra-bins:" line),
#      MB_VM_COMPRESS_MODULES (FORMAT:MODULE..., modules stored compressed).
# A scenario line "# consts: NAME..." puts NAME=SECONDS for each of the code's
# Duration constants NAME (src/protocol.rs, see code_secs in common.sh) into
# /etc/mb-vm.conf, which lib.sh reads.
set -eu
. "$(dirname "$0")/common.sh"

scenario=${1:?usage: build-initramfs.sh SCENARIO_FILE [OUTPUT]}
out=${2:-$MB_VM_WORK/initramfs.gz}
[ -f "$scenario" ] || die "scenario file $scenario not found"

need cpio cpio
compress=${MB_VM_COMPRESS:-gzip}
case $compress in
gzip) need gzip gzip; compressor="gzip -1" ;;
zstd) need zstd zstd; compressor="zstd -1 -T0 -q" ;;
lz4) need lz4 lz4; compressor="lz4 -l -1 -q" ;;
none) compressor="cat" ;;
*) die "MB_VM_COMPRESS=$compress: use gzip, zstd, lz4 or none" ;;
esac
need depmod kmod
need modprobe kmod
need ldd libc-bin
need busybox busybox-static
MB_VM_MODULES=${MB_VM_MODULES:-vfat btrfs nf_conntrack e1000 acpi-cpufreq}
moddir=/lib/modules/$KVER
srcmoddir=$MB_VM_MODROOT$moddir
testmods=${MB_TEST_MODULES_DIR:-$MB_VM_WORK/modules}

busybox=$(command -v busybox)
ldd "$busybox" 2>&1 | grep -q 'not a dynamic executable' ||
	die "$busybox is dynamically linked: install the Debian package 'busybox-static'"

stage=$MB_VM_WORK/initramfs-root
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root} "$stage$moddir"

# --- busybox and its applets
cp "$busybox" "$stage/bin/busybox"
for applet in $("$busybox" --list-full); do
	[ -e "$stage/$applet" ] && continue
	mkdir -p "$stage/$(dirname "$applet")"
	ln -s /bin/busybox "$stage/$applet"
done

# --- a dynamically linked binary plus its libraries and loader, paths preserved
copy_with_libs() { # SRC DEST_IN_IMAGE
	[ -x "$1" ] || die "binary $1 not found or not executable (build it: cargo build --release)"
	install -D -m 0755 "$1" "$stage$2"
	ldd "$1" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(/{print $1}' | sort -u |
	while read -r lib; do
		[ -e "$stage$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$stage$lib"
	done
	if ldd "$1" | grep -q 'not found'; then
		die "ldd $1 reports a missing library: $(ldd "$1" | grep 'not found')"
	fi
}
[ -z "${MODBROKERD:-}" ] || copy_with_libs "$MODBROKERD" /usr/bin/modbrokerd
[ -z "${MODBROKER:-}" ] || copy_with_libs "$MODBROKER" /usr/bin/modbroker
# MB_VM_EXTRA_BINS (default: the scenario's "# extra-bins:" line): more
# binaries for the image, space separated, each SRC (same path in the image)
# or SRC=DEST, copied with their libraries.
extra_bins=${MB_VM_EXTRA_BINS-$(sed -n 's/^# extra-bins:[[:space:]]*//p' "$scenario" | head -n1)}
for spec in $extra_bins; do
	case $spec in
	*=*) copy_with_libs "${spec%%=*}" "${spec#*=}" ;;
	*) copy_with_libs "$spec" "$spec" ;;
	esac
done

# --- module tree
for f in modules.builtin modules.builtin.modinfo modules.order; do
	[ -f "$srcmoddir/$f" ] && cp "$srcmoddir/$f" "$stage$moddir/"
done
if [ "$MB_VM_MODULES" = all ]; then
	cp -a "$srcmoddir/kernel" "$stage$moddir/kernel"
	depmod -b "$stage" "$KVER" || die "depmod -b failed"
else
	for m in $MB_VM_MODULES; do
		deps=$(modprobe ${MB_VM_MODROOT:+-d "$MB_VM_MODROOT"} -S "$KVER" -D "$m") || die "modprobe -D $m failed for $KVER"
		printf '%s\n' "$deps" | awk '$1=="insmod"{print $2}' | while read -r ko; do
			case $ko in "$srcmoddir"/*) ;; *) die "unexpected module path $ko" ;; esac
			dest=$stage$moddir/${ko#"$srcmoddir"/}
			[ -e "$dest" ] || install -D -m 0644 "$ko" "$dest"
		done
	done
	if [ -z "$MB_VM_MODROOT" ]; then
		mkdir -p "$stage$moddir/extra"
		for m in mb_fail mb_ok mb_ok2 mb_base mb_user mb_slow; do
			[ -f "$testmods/$m.ko" ] || die "test module $testmods/$m.ko missing (run tests/modules/build.sh)"
			cp "$testmods/$m.ko" "$stage$moddir/extra/"
		done
	fi
	# MB_VM_COMPRESS_MODULES (default: the scenario's "# compress-modules:" line):
	# space-separated FORMAT:MODULE (FORMAT xz, zst or gz) replacing those modules
	# of the image's tree by .ko.xz/.ko.zst/.ko.gz copies before depmod runs.
	# A module the kernel's tree already ships compressed (6.12's .ko.xz) is
	# decompressed first, so it can be stored in another format.
	compress_mods=${MB_VM_COMPRESS_MODULES-$(sed -n 's/^# compress-modules:[[:space:]]*//p' "$scenario" | head -n1)}
	# Specs naming test modules (mb_*) are dropped when the image has none.
	if [ -n "$MB_VM_MODROOT" ]; then
		compress_mods=$(for spec in $compress_mods; do case $spec in *:mb_*) ;; *) echo "$spec" ;; esac; done)
	fi
	for spec in $compress_mods; do
		fmt=${spec%%:*} m=${spec#*:}
		ko=$(find "$stage$moddir" \( -name "$m.ko*" -o -name "$(echo "$m" | tr - _).ko*" -o -name "$(echo "$m" | tr _ -).ko*" \) | head -n1)
		case $ko in
		*.ko) ;;
		*.ko.xz) need xz xz-utils; xz -d -f "$ko"; ko=${ko%.xz} ;;
		*.ko.zst) need zstd zstd; zstd -q -d -f --rm "$ko"; ko=${ko%.zst} ;;
		*.ko.gz) need gzip gzip; gzip -d -f "$ko"; ko=${ko%.gz} ;;
		*) die "MB_VM_COMPRESS_MODULES: no $m.ko* in the image's module tree" ;;
		esac
		case $fmt in
		xz) need xz xz-utils; xz -f --check=crc32 --lzma2=dict=1MiB "$ko" ;;
		zst) need zstd zstd; zstd -q -f --rm -T1 "$ko" ;;
		gz) need gzip gzip; gzip -9 -n -f "$ko" ;;
		*) die "MB_VM_COMPRESS_MODULES: unknown format '$fmt' in '$spec' (xz, zst, gz)" ;;
		esac
		echo "initramfs: compressed ${ko#"$stage"} with $fmt" >&2
	done
	depmod -b "$stage" "$KVER" || die "depmod -b failed"
	for spec in $compress_mods; do
		m=$(echo "${spec#*:}" | tr - _)
		grep -Eq "^[^:]*/($m|$(echo "$m" | tr _ -))\.ko\.${spec%%:*}:" "$stage$moddir/modules.dep" ||
			die "depmod did not index the ${spec%%:*}-compressed ${spec#*:} (kmod built without that format? see 'kmod --version')"
	done
	[ -n "$MB_VM_MODROOT" ] || grep -q '^extra/mb_user.ko: extra/mb_base.ko$' "$stage$moddir/modules.dep" ||
		die "depmod did not record mb_user -> mb_base in modules.dep"
fi

# --- udev (MB_VM_UDEV=1)
if [ "${MB_VM_UDEV:-0}" = 1 ]; then
	need /usr/bin/udevadm udev
	need /lib/systemd/systemd-udevd udev
	need /usr/bin/kmod kmod
	copy_with_libs /usr/bin/udevadm /usr/bin/udevadm
	copy_with_libs /lib/systemd/systemd-udevd /lib/systemd/systemd-udevd
	ln -sf /usr/bin/udevadm "$stage/bin/udevadm" # rules call /bin/udevadm
	for h in /lib/udev/*; do
		if [ ! -f "$h" ] || [ ! -x "$h" ]; then continue; fi
		if file -b "$h" 2>/dev/null | grep -q ELF || head -c 4 "$h" | grep -q ELF; then
			copy_with_libs "$h" "$h"
		else
			install -D -m 0755 "$h" "$stage$h"
		fi
	done
	[ ! -x /lib/systemd/systemd-sysctl ] || copy_with_libs /lib/systemd/systemd-sysctl /lib/systemd/systemd-sysctl
	cp -a /lib/udev/rules.d "$stage/lib/udev/"
	[ ! -f /lib/udev/hwdb.bin ] || cp /lib/udev/hwdb.bin "$stage/lib/udev/"
	rm -rf "$stage/etc/udev" && cp -a /etc/udev "$stage/etc/udev"
	copy_with_libs /usr/bin/kmod /usr/bin/kmod
	ln -sf /usr/bin/kmod "$stage/sbin/modprobe"
	for d in /lib/modprobe.d /etc/modprobe.d; do
		[ ! -d "$d" ] || { mkdir -p "$stage$d" && cp -a "$d/." "$stage$d/"; }
	done
	install -D -m 0644 "$REPO_ROOT/udev/80-drivers.rules" "$stage/usr/share/modbroker/80-drivers.rules"
fi

# --- init, helper lib, scenario
install -m 0755 "$REPO_ROOT/tests/vm/init" "$stage/init"
install -m 0644 "$REPO_ROOT/tests/vm/lib.sh" "$stage/lib.sh"
install -m 0755 "$scenario" "$stage/scenario.sh"
for c in $(sed -n 's/^# consts:[[:space:]]*//p' "$scenario" | head -n1); do
	secs=$(code_secs "$c") || exit 1
	echo "$c=$secs" >>"$stage/etc/mb-vm.conf"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"
# udev rules name system groups (disk, kvm, ...): give them the host's list.
[ "${MB_VM_UDEV:-0}" != 1 ] || cp /etc/group "$stage/etc/group"

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | $compressor >"$out.tmp"
mv "$out.tmp" "$out"
echo "initramfs: $out ($(du -h "$out" | cut -f1), $(find "$stage$moddir" -name '*.ko*' | wc -l) modules, $compress)" >&2
