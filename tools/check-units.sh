#!/bin/bash
# check-units.sh - check the systemd units as a distro reviewer would: install into a staging
# root, `systemd-analyze verify` the units there, require `systemd-analyze security` to rate the
# service's exposure 2.0 or lower ("OK"), and find no ordering cycle once they are enabled next
# to this host's early-boot units. Run by `make test`.
set -eu
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "systemd-analyze missing: install the Debian package 'systemd'" >&2; exit 1; }
stage=build/stage
rm -rf "$stage"
make --no-print-directory install DESTDIR="$stage" PREFIX=/usr >/dev/null
# The units call /bin/kill (ExecReload); verify checks that every command exists under --root.
# shellcheck disable=SC2012 # two fixed paths
kill_bin=$(ls /bin/kill /usr/bin/kill 2>/dev/null | head -n1)
[ -n "$kill_bin" ] || { echo "kill missing: install the Debian package 'procps'" >&2; exit 1; }
install -D -m 0755 "$kill_bin" "$stage/bin/kill"
# modbroker-install@.service is deliberately not sandboxed (install commands get root's full
# rights, as modprobe's would), so only modbroker.service is held to the exposure bound.
units=""
for u in modbroker.socket modbroker.service modbroker-install.socket modbroker-install@.service; do
	units="$units $stage/usr/lib/systemd/system/$u"
done
# shellcheck disable=SC2086
systemd-analyze verify --root="$stage" $units
echo "check-units: systemd-analyze verify: ok"
report=$(systemd-analyze security --offline=true --root="$stage" modbroker.service 2>&1) || true
echo "$report" | tail -n 1
# --threshold is on the 0..100 scale: 20 means an exposure level of 2.0.
if ! systemd-analyze security --offline=true --root="$stage" --threshold=20 modbroker.service >/dev/null 2>&1; then
	echo "$report" | grep '✗' >&2
	echo "check-units: exposure above 2.0" >&2
	exit 1
fi
echo "check-units: security exposure at most 2.0: ok"
# Ordering cycles: the units enabled as the package enables them, on top of this host's own units
# (sysinit.target, systemd-udev-trigger.service...), and the targets they join started as PID 1
# would start them. verify exits 0 even when it breaks a cycle, so its output is what tells.
systemctl --root="$stage" enable modbroker.socket modbroker.service >/dev/null 2>&1
cycles=$(SYSTEMD_UNIT_PATH="$PWD/$stage/etc/systemd/system:$PWD/$stage/usr/lib/systemd/system:" \
	systemd-analyze verify sysinit.target sockets.target 2>&1 | grep -i 'ordering cycle' || true)
if [ -n "$cycles" ]; then
	echo "$cycles" >&2
	echo "check-units: ordering cycle with sysinit.target" >&2
	exit 1
fi
echo "check-units: no ordering cycle from sysinit.target (this host's units): ok"
