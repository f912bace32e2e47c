#!/bin/bash
# make-deb.sh - build an installable Debian package of modbroker from `make install`'s output,
# with dpkg-deb (no cargo-deb needed): build/modbroker_VERSION_ARCH.deb. Then, unless
# --no-check, install it into a scratch dpkg root to prove it installs and removes cleanly.
# Run by `make deb` (and, with the check, by `make test`).
set -eu
cd "$(dirname "$0")/.."
command -v dpkg-deb >/dev/null || { echo "dpkg-deb missing: install the Debian package 'dpkg'" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
root=build/deb/root
deb=build/modbroker_${version}_${arch}.deb
rm -rf build/deb
make --no-print-directory install DESTDIR="$root" PREFIX=/usr >/dev/null
install -d "$root/DEBIAN"
install -m 0755 debian/postinst debian/prerm debian/postrm "$root/DEBIAN/"
install -m 0644 debian/triggers "$root/DEBIAN/triggers"
# 80-drivers.rules is deliberately not a conffile: it must leave with the package (`dpkg -r`), or
# an initramfs built afterwards would still carry it (harmless, as it falls back to udev's
# builtin, but not the stock state). Local changes belong in /etc/modbroker/modbroker.toml.
echo /etc/modbroker/modbroker.toml >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
# The client is linked statically with glibc (README, "Why the client is static"): as Debian
# policy asks, Built-Using names the glibc it contains, so a glibc fix shows it needs a rebuild.
glibc=$(dpkg-query -W -f='${source:Package} (= ${source:Version})' libc6-dev)
cat >"$root/DEBIAN/control" <<CONTROL
Package: modbroker
Version: $version
Architecture: $arch
Maintainer: modbroker developers <modbroker-security@lists.invalid>
Depends: libc6 (>= 2.34), libkmod2, udev, kmod, init-system-helpers (>= 1.52)
Built-Using: $glibc
Section: admin
Priority: optional
Installed-Size: $size
Homepage: https://modbroker.invalid/
Description: kernel module-load broker: one finit_module per module name
 udev asks to load the same kernel module once per device (on a big server,
 once per CPU). modbrokerd merges every request for one module name into a
 single finit_module call and gives every caller its true outcome; the
 modbroker client replaces udev's builtin "kmod load" and falls back to
 loading directly when the daemon is not running.
CONTROL
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "make-deb: built $deb"
[ "${1:-}" = --no-check ] && exit 0

# Install into a scratch root (no effect on this machine: maintainer scripts see DPKG_ROOT).
scratch=$PWD/build/deb/scratch
rm -rf "$scratch"
mkdir -p "$scratch/var/lib/dpkg/info" "$scratch/var/lib/dpkg/updates"
touch "$scratch/var/lib/dpkg/status"
dpkg --root="$scratch" --force-script-chrootless --force-depends --log=/dev/null -i "$deb" >/dev/null
for f in usr/bin/modbrokerd usr/bin/modbroker usr/lib/systemd/system/modbroker.socket \
	usr/lib/systemd/system/modbroker.service usr/lib/systemd/system/modbroker-install.socket \
	usr/lib/systemd/system/modbroker-install@.service etc/udev/rules.d/80-drivers.rules \
	usr/share/initramfs-tools/hooks/modbroker usr/share/initramfs-tools/scripts/init-top/modbroker \
	usr/share/initramfs-tools/scripts/init-bottom/modbroker \
	usr/lib/dracut/modules.d/90modbroker/module-setup.sh \
	etc/modbroker/modbroker.toml usr/share/man/man8/modbrokerd.8 usr/share/man/man8/modbroker.8 \
	usr/share/bash-completion/completions/modbroker; do
	[ -e "$scratch/$f" ] || { echo "make-deb: $f missing after install" >&2; exit 1; }
done
grep -q 'RUN{builtin}+="kmod load"' "$scratch/etc/udev/rules.d/80-drivers.rules" ||
	{ echo "make-deb: 80-drivers.rules lacks udev's builtin path" >&2; exit 1; }
# Enabled without a running systemd (deb-systemd-helper honours DPKG_ROOT): the socket, and the
# service (started by sysinit.target, ready before udev's coldplug).
for f in sockets.target.wants/modbroker.socket sysinit.target.wants/modbroker.service; do
	[ -L "$scratch/etc/systemd/system/$f" ] || { echo "make-deb: $f not enabled by the postinst" >&2; exit 1; }
done
"$scratch/usr/bin/modbroker" --version >/dev/null
dpkg --root="$scratch" --force-script-chrootless --log=/dev/null -r modbroker >/dev/null
for f in usr/bin/modbrokerd etc/udev/rules.d/80-drivers.rules usr/share/initramfs-tools/hooks/modbroker; do
	[ ! -e "$scratch/$f" ] || { echo "make-deb: $f left after removal" >&2; exit 1; }
done
dpkg --root="$scratch" --force-script-chrootless --log=/dev/null --purge modbroker >/dev/null
for f in etc/modbroker/modbroker.toml etc/systemd/system/sockets.target.wants/modbroker.socket \
	etc/systemd/system/modbroker.socket etc/systemd/system/sysinit.target.wants/modbroker.service \
	etc/systemd/system/modbroker.service; do
	if [ -e "$scratch/$f" ] || [ -L "$scratch/$f" ]; then echo "make-deb: $f left after purge" >&2; exit 1; fi
done
echo "make-deb: installs, removes and purges cleanly in a scratch root"
