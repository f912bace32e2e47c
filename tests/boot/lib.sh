# shellcheck shell=bash
# tests/boot/lib.sh - the one image builder and booter of the real-boot tests (sourced).
#
# An image is Debian (bookworm or trixie) made with debootstrap --variant=minbase, systemd as
# PID 1, Debian's kernel, and one initramfs generator (initramfs-tools or dracut) installed with
# apt inside the chroot. The base tree is cached under build/boot/DIST-GEN/base and rebuilt when
# its recipe (base_tree, in_chroot: see base_stamp) changes; tests/boot/guest/'s files go into
# each boot's copy, not the base. Each boot copies the base, changes the copy as a user
# would (dpkg -i, an edited config file, the generator's rebuild), makes an ext4 image of it with
# mkfs.ext4 -d, and boots it under qemu TCG with the kernel and initramfs from the image's /boot,
# root=/dev/vda on virtio. The guest's mbtest-report.service writes its findings to
# /var/lib/mbtest and powers off; debugfs reads them back from the image.
#
# Needs (host): debootstrap, qemu-system-x86, e2fsprogs (mkfs.ext4 -d, debugfs), dosfstools.

BOOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=${REPO_ROOT:-$(cd "$BOOT_DIR/../.." && pwd)}
MB_BOOT_WORK=${MB_BOOT_WORK:-$REPO_ROOT/build/boot}
MB_BOOT_MIRROR=${MB_BOOT_MIRROR:-http://deb.debian.org/debian}
MB_BOOT_TIMEOUT=${MB_BOOT_TIMEOUT:-900}
# Trace from the first instant: load syscalls, module_load, PID 1's execs (the switch from the
# initramfs to the real root is PID 1's last exec) and a kprobe naming every file opened, so a
# load call can be attributed to the module file its thread opened last. trace_clock=mono lines
# the timestamps up with systemd's monotonic ones.
MB_BOOT_TRACE="trace_clock=mono trace_options=record-tgid trace_buf_size=32M kprobe_event=p:mb/mb_open,do_sys_openat2,path=+0(%si):ustring trace_event=syscalls:sys_enter_finit_module,syscalls:sys_exit_finit_module,syscalls:sys_enter_init_module,syscalls:sys_exit_init_module,module:module_load,sched:sched_process_exec"

die() { echo "ERROR: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "required tool '$1' not found: install the Debian package '$2'"; }
log() { echo "boot: $*" >&2; }

# in_chroot ROOT CMD...: run CMD in ROOT with /proc, /sys and /dev mounted (kernel and initramfs
# postinsts need them), without starting services (policy-rc.d).
in_chroot() {
	local root=$1 rc=0
	shift
	mount -t proc proc "$root/proc"
	mount -t sysfs sysfs "$root/sys"
	mount --bind /dev "$root/dev"
	DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 chroot "$root" "$@" || rc=$?
	umount "$root/dev" "$root/sys" "$root/proc"
	return "$rc"
}

# remove_tree DIR: deletes DIR, first unmounting whatever an interrupted in_chroot left mounted
# below it; --one-file-system keeps rm out of any mount it could not release (a bind of /dev).
remove_tree() {
	findmnt -rno TARGET | grep "^$1/" | sort -r | xargs -r umount -l
	rm -rf --one-file-system "$1"
}

# The cache key: the recipe below (the guest's test files go into each boot's copy instead).
base_stamp() {
	declare -f base_tree in_chroot | sha256sum | cut -c1-16
}

# base_tree DIST GEN: path of the cached base tree, built if missing or stale.
base_tree() {
	local dist=$1 gen=$2 dir="$MB_BOOT_WORK/$1-$2" stamp
	stamp=$(base_stamp)
	if [ -f "$dir/base.ok" ] && [ "$(cat "$dir/base.ok")" = "$stamp" ]; then
		echo "$dir/base"
		return
	fi
	need debootstrap debootstrap
	log "building the $dist base image with $gen (cached in $dir)"
	remove_tree "$dir"
	mkdir -p "$dir"
	debootstrap --variant=minbase --include=systemd-sysv,udev,kmod,e2fsprogs,apt \
		"$dist" "$dir/base" "$MB_BOOT_MIRROR" >"$dir/debootstrap.log" 2>&1 ||
		{ tail -n 20 "$dir/debootstrap.log" >&2; die "debootstrap $dist failed"; }
	local root="$dir/base"
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod +x "$root/usr/sbin/policy-rc.d"
	cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
	if [ "$gen" = dracut ]; then
		# Host-only, as on Fedora, RHEL and SUSE. Built in a chroot, host-only cannot see the
		# target's disk, so name its drivers, as an installer does.
		mkdir -p "$root/etc/dracut.conf.d"
		printf 'hostonly="yes"\nadd_drivers+=" virtio_blk virtio_pci ext4 "\n' >"$root/etc/dracut.conf.d/90-mbtest.conf"
	fi
	# The generator first, so the kernel's "initramfs-tools | linux-initramfs-tool" is met by it.
	# shellcheck disable=SC2015 # the || branch is for a failure of either install
	in_chroot "$root" apt-get install -y -q --no-install-recommends "$gen" >>"$dir/debootstrap.log" 2>&1 &&
		in_chroot "$root" apt-get install -y -q --no-install-recommends linux-image-amd64 >>"$dir/debootstrap.log" 2>&1 ||
		{ tail -n 20 "$dir/debootstrap.log" >&2; die "installing $gen and the kernel in $dist failed"; }
	in_chroot "$root" apt-get clean
	echo "/dev/vda / ext4 defaults 0 1" >"$root/etc/fstab"
	echo "mbtest-$dist" >"$root/etc/hostname"
	# Quiet console: no login prompts.
	ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
	ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
	echo "$stamp" >"$dir/base.ok"
	echo "$root"
}

# new_tree DIST GEN NAME: a fresh copy of the base tree for one boot; prints its path.
new_tree() {
	local base dir="$MB_BOOT_WORK/$1-$2/$3"
	base=$(base_tree "$1" "$2") || exit 1
	remove_tree "$dir"
	mkdir -p "$dir"
	cp -a "$base" "$dir/root"
	install -m 0755 "$BOOT_DIR/guest/mbtest-report" "$dir/root/usr/local/sbin/mbtest-report"
	install -m 0644 "$BOOT_DIR/guest/mbtest-report.service" "$dir/root/etc/systemd/system/mbtest-report.service"
	mkdir -p "$dir/root/etc/systemd/system/multi-user.target.wants"
	ln -sf ../mbtest-report.service "$dir/root/etc/systemd/system/multi-user.target.wants/mbtest-report.service"
	echo "$dir/root"
}

# rebuild_initramfs ROOT GEN: the generator's own rebuild for every installed kernel.
rebuild_initramfs() {
	case $2 in
	initramfs-tools) in_chroot "$1" update-initramfs -u -k all ;;
	dracut) in_chroot "$1" dracut --force --regenerate-all ;;
	esac
}

# make_disk ROOT IMG: an ext4 image of ROOT with room to spare. The booted system gets no
# policy-rc.d: there, maintainer scripts may start and restart services as on any machine.
make_disk() {
	local mb
	rm -f "$1/usr/sbin/policy-rc.d"
	mb=$(du -sm "$1" | cut -f1)
	rm -f "$2"
	mkfs.ext4 -q -F -L root -d "$1" "$2" "$((mb + 768))M"
}

# boot_image DIR SMP: boots DIR/disk.img (kernel and initramfs from DIR/root/boot) and reads the
# guest's results into DIR/results. Retries once on a kernel panic before userspace (a TCG
# flake at high vCPU counts), never on anything else. Returns non-zero if no results came back.
boot_image() {
	local dir=$1 smp=$2 kernel initrd try rc
	# shellcheck disable=SC2012 # Debian's kernel and initramfs file names
	kernel=$(ls "$dir"/root/boot/vmlinuz-* | sort -V | tail -n1)
	# shellcheck disable=SC2012 # Debian's kernel and initramfs file names
	initrd=$(ls "$dir"/root/boot/initr*-"${kernel##*/vmlinuz-}"* | head -n1)
	for try in 1 2; do
		rc=0
		timeout "$MB_BOOT_TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max \
			-smp "$smp" -m 2048 -nographic -no-reboot -nic none \
			-kernel "$kernel" -initrd "$initrd" \
			-drive "file=$dir/disk.img,if=virtio,format=raw" \
			${MB_BOOT_EXTRA_DISK:+-drive "file=$MB_BOOT_EXTRA_DISK,if=virtio,format=raw"} \
			-append "root=/dev/vda rw console=ttyS0 panic=-1 $MB_BOOT_TRACE ${MB_BOOT_APPEND:-}" \
			</dev/null >"$dir/console.log" 2>&1 || rc=$?
		grep -q MBTEST-DONE "$dir/console.log" && break
		if [ "$try" = 1 ] && grep -q 'Kernel panic' "$dir/console.log" &&
			! grep -q 'Run /init\|Run /sbin/init' "$dir/console.log"; then
			log "kernel panic before userspace in $dir; retrying once"
			continue
		fi
		log "boot of $dir ended without results (qemu exit $rc); console: $dir/console.log"
		tail -n 30 "$dir/console.log" >&2
		return 1
	done
	rm -rf "$dir/results"
	debugfs -R "rdump /var/lib/mbtest $dir" "$dir/disk.img" >/dev/null 2>&1
	mv "$dir/mbtest" "$dir/results" 2>/dev/null
	[ -f "$dir/results/done" ] || { log "no results in $dir/disk.img"; return 1; }
}
