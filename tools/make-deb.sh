#!/bin/bash
# make-deb.sh - build modbroker's Debian packages from debian/ (debhelper, compat 13) with
# dpkg-buildpackage, and check them:
#   - lintian: 0 errors and 0 warnings on the source package and on the binary packages (each
#     override sits in debian/*.lintian-overrides with its reason);
#   - unless --no-check: install, reinstall, remove and purge in a scratch dpkg root beside a
#     stand-in udev package, with udev's rule at Debian 12's and at Debian 13's path: the
#     diversion keeps udev's file aside while modbroker is installed and gives it back after.
# Out: build/modbroker_VERSION_ARCH.deb (the by-products, -dbgsym and the source package, stay in
# build/pkg). Run by `make deb`, and so by `make test`.
set -eu
cd "$(dirname "$0")/.."
need() { command -v "$1" >/dev/null || { echo "make-deb: $1 missing: install the Debian package '$2'" >&2; exit 1; }; }
need dpkg-buildpackage dpkg-dev
need dh debhelper
need lintian lintian
need deb-systemd-helper init-system-helpers
version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg --print-architecture)
stage=$PWD/build/pkg
src=$stage/modbroker-$version
deb=build/modbroker_${version}_${arch}.deb
rm -rf "$stage" build/modbroker_*.deb
mkdir -p "$src"

# The packages are built from a copy of the project's files (tracked and new ones, never ignored
# ones), so that the source package holds exactly the project and the build's by-products stay in
# build/pkg. Cargo's cache (target/) is shared with the checkout through a symlink, added after
# the source package is made.
if git rev-parse --git-dir >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
		[ -e "$f" ] && printf '%s\0' "$f"
	done | tar --null --files-from=- -cf - | tar -xf - -C "$src"
else
	tar --exclude=./target --exclude=./build --exclude=./fuzz/target -cf - . | tar -xf - -C "$src"
fi
log=$stage/build.log
run_logged() {
	"$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "make-deb: '$*' failed; the whole log is $log" >&2; exit 1; }
}
(cd "$stage" && run_logged dpkg-source -b "modbroker-$version")
mkdir -p target
ln -s "$PWD/target" "$src/target"
# -d: cargo and rustc come from rustup (Cargo.toml's rust-version is newer than Debian 12's rustc),
# which dpkg-checkbuilddeps cannot see; tools/install-deps.sh installs the other build-dependencies.
(cd "$src" && run_logged dpkg-buildpackage -us -uc -b -d)
cp "$stage/modbroker_${version}_${arch}.deb" "$deb"
echo "make-deb: built $deb (dpkg-buildpackage; build log in $log)"

# --fail-on: errors and warnings fail the build; info and pedantic tags are only shown.
lintian --fail-on error,warning --tag-display-limit 0 "$stage/modbroker_${version}.dsc" \
	"$stage/modbroker_${version}_${arch}.changes" ||
	{ echo "make-deb: lintian found errors or warnings (above)" >&2; exit 1; }
echo "make-deb: lintian: no errors, no warnings (source and binary packages)"
[ "${1:-}" = --no-check ] && exit 0

# A stand-in for udev's package: VERSION, with its 80-drivers.rules at RULES_DIR.
fake_udev() {
	local version=$1 rules_dir=$2 root=$stage/fake-udev-$1
	rm -rf "$root"
	mkdir -p "$root/DEBIAN" "$root$rules_dir"
	printf 'Package: udev\nVersion: %s\nArchitecture: all\nMaintainer: none <none@invalid>\nDescription: stand-in\n' \
		"$version" >"$root/DEBIAN/control"
	echo "# udev $version's own rule" >"$root$rules_dir/80-drivers.rules"
	dpkg-deb --root-owner-group --build "$root" "$stage/udev_$version.deb" >/dev/null
	echo "$stage/udev_$version.deb"
}

fail() { echo "make-deb: $*" >&2; exit 1; }

# diversions ROOT: how many diversions of 80-drivers.rules modbroker holds in the scratch ROOT.
diversions() {
	dpkg-divert --admindir "$1/var/lib/dpkg" --list '*/80-drivers.rules' | grep -c ' by modbroker$' || true
}

# scratch_check RULES_DIR: the whole life of the package in a scratch root with a merged /usr, udev's
# rule shipped at RULES_DIR (Debian 12: /lib/udev/rules.d, 13: /usr/lib/udev/rules.d). Maintainer
# scripts run on this machine with DPKG_ROOT set, with no effect on it.
scratch_check() {
	local rules_dir=$1 scratch=$stage/scratch f rule
	rm -rf "$scratch"
	mkdir -p "$scratch/var/lib/dpkg/info" "$scratch/var/lib/dpkg/updates" "$scratch/usr/lib" "$scratch/usr/bin"
	ln -s usr/lib "$scratch/lib"
	ln -s usr/bin "$scratch/bin"
	touch "$scratch/var/lib/dpkg/status"
	local dpkg=(dpkg --root="$scratch" --force-script-chrootless --force-depends --log=/dev/null)
	rule=$scratch/usr/lib/udev/rules.d/80-drivers.rules
	run_logged "${dpkg[@]}" -i "$(fake_udev 1 "$rules_dir")"
	run_logged "${dpkg[@]}" -i "$deb"
	for f in usr/bin/modbrokerd usr/bin/modbroker lib/systemd/system/modbroker.socket \
		lib/systemd/system/modbroker.service lib/systemd/system/modbroker-install.socket \
		lib/systemd/system/modbroker-install@.service usr/lib/udev/rules.d/80-drivers.rules \
		usr/share/initramfs-tools/hooks/modbroker usr/share/initramfs-tools/scripts/init-top/modbroker \
		usr/share/initramfs-tools/scripts/init-bottom/modbroker \
		usr/lib/dracut/modules.d/90modbroker/module-setup.sh \
		etc/modbroker/modbroker.toml usr/share/man/man8/modbrokerd.8.gz usr/share/man/man8/modbroker.8.gz \
		usr/share/bash-completion/completions/modbroker usr/share/doc/modbroker/copyright; do
		[ -e "$scratch/$f" ] || fail "$f missing after install"
	done
	[ ! -e "$scratch/etc/udev" ] || fail "the package put files in /etc/udev"
	grep -q 'RUN{builtin}+="kmod load"' "$rule" || fail "80-drivers.rules lacks udev's builtin path"
	grep -q '^# udev 1' "$rule.distrib" || fail "udev's rule not kept as 80-drivers.rules.distrib"
	[ "$(diversions "$scratch")" = 2 ] ||
		fail "not both names of udev's rule diverted"
	# Enabled without a running systemd (deb-systemd-helper honours DPKG_ROOT): the socket, and the
	# service (started by sysinit.target, ready before udev's coldplug).
	for f in sockets.target.wants/modbroker.socket sysinit.target.wants/modbroker.service; do
		[ -L "$scratch/etc/systemd/system/$f" ] || fail "$f not enabled by the postinst"
	done
	"$scratch/usr/bin/modbroker" --version >/dev/null
	# udev's upgrade goes to the diverted name; our reinstall (an upgrade) leaves udev's copy alone.
	run_logged "${dpkg[@]}" -i "$(fake_udev 2 "$rules_dir")"
	run_logged "${dpkg[@]}" -i "$deb"
	grep -q 'RUN{builtin}+="kmod load"' "$rule" || fail "udev's upgrade replaced our rule"
	grep -q '^# udev 2' "$rule.distrib" || fail "udev's upgraded rule not at the diverted name"
	run_logged "${dpkg[@]}" -r modbroker
	grep -q '^# udev 2' "$rule" || fail "udev's rule not given back on removal"
	[ ! -e "$rule.distrib" ] || fail "80-drivers.rules.distrib left after removal"
	[ "$(diversions "$scratch")" = 0 ] || fail "diversions left after removal"
	for f in usr/bin/modbrokerd usr/share/initramfs-tools/hooks/modbroker; do
		[ ! -e "$scratch/$f" ] || fail "$f left after removal"
	done
	run_logged "${dpkg[@]}" --purge modbroker
	for f in etc/modbroker/modbroker.toml etc/systemd/system/sockets.target.wants/modbroker.socket \
		etc/systemd/system/modbroker.socket etc/systemd/system/sysinit.target.wants/modbroker.service \
		etc/systemd/system/modbroker.service; do
		if [ -e "$scratch/$f" ] || [ -L "$scratch/$f" ]; then fail "$f left after purge"; fi
	done
	grep -q '^# udev 2' "$rule" || fail "udev's rule gone after purge"
}
scratch_check /lib/udev/rules.d
scratch_check /usr/lib/udev/rules.d
echo "make-deb: installs, upgrades, removes and purges cleanly in a scratch root (udev's rule at Debian 12's and 13's path)"
