#!/bin/bash
# install-deps.sh - install what building and testing modbroker needs, on Debian (12 or later),
# skipping packages that are already there. Used by `make test` and `make demo`.
#
# Build: libkmod-dev (libkmod), libclang-dev + clang (bindgen for kmod-sys), pkg-config.
# VM test: qemu-system-x86, linux-image-amd64 (Debian's kernel and module tree),
#   linux-headers-amd64 + gcc + make (test modules), busybox-static (the VM's userland),
#   kmod (depmod/modprobe), cpio, udev (systemd-udevd for the coldplug test).
# Daemon tests: systemd (systemd-socket-activate, systemd-analyze), procps (kill).
# Compressed-module and coldplug VM tests: xz-utils, zstd, lz4.
# Fuzzing (tools/fuzz.sh, which installs cargo-fuzz itself): g++ (libFuzzer is C++).
# Real-boot tests (tests/boot): debootstrap, e2fsprogs (mkfs.ext4 -d, debugfs), init-system-helpers
#   (the package's maintainer scripts, checked in a scratch root by make-deb), jq (the boot's
#   record, read back from the guest).
# Package (make deb, tools/make-deb.sh): dpkg-dev (dpkg-buildpackage), debhelper, lintian.
# Plot test (tests/report.rs): librsvg2-bin (rsvg-convert renders `modbroker plot`'s SVG).
# Differential test (tests/diff): the same debootstrap trees; util-linux (unshare), mawk.
# Benchmarks (make bench, tests/vm/bench.sh startup-host): hyperfine (wall time of whole client
#   processes), valgrind (their instructions); binutils (readelf, tools/check-hardening.sh).
# Lint (make lint): shellcheck (tools/shellcheck.sh).
set -eu

packages="libkmod-dev libclang-dev clang pkg-config gcc make
qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static kmod cpio udev systemd
xz-utils zstd lz4 procps python3 g++ debootstrap e2fsprogs init-system-helpers jq
librsvg2-bin util-linux mawk hyperfine valgrind binutils dpkg-dev debhelper lintian shellcheck"

missing=
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
	echo "install-deps: all packages present"
	exit 0
fi
echo "install-deps: installing$missing"
if [ "$(id -u)" != 0 ]; then
	SUDO=sudo
else
	SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
