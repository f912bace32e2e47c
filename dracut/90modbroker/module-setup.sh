#!/bin/bash
# dracut module for modbroker: brings modbroker.socket and modbroker.service into a systemd
# initrd, so that the coldplug udev runs there (one request per device: per CPU for a CPU
# driver) is merged into one load per module. The socket listens before systemd-udevd starts;
# the service is wanted by the initrd's sysinit.target and ready before systemd-udev-trigger
# starts (the unit's own [Install] and Before=, enabled here as in the real root); both stop
# before switch-root (initrd.conf: Conflicts=/Before=initrd-cleanup.service, as multipathd does),
# and the real root's daemon takes over.
#
# 80-drivers.rules goes in as the host's udev uses it: an administrator's (or `make install`'s)
# /etc/udev/rules.d/80-drivers.rules if there is one, else the package's, which has taken the
# place of udev's (diverted) in /usr/lib/udev/rules.d. With the client in the image it takes the
# broker path, and should the client be missing, udev's builtin path.

# dracut sets moddir, initdir and systemdsystemunitdir before it calls these functions.
# shellcheck disable=SC2154

# Included by default (host-only and generic) when the binaries are installed.
check() {
	require_binaries modbroker modbrokerd || return 1
	return 0
}

depends() {
	echo systemd udev-rules
	return 0
}

install() {
	inst_multiple modbroker modbrokerd
	if [[ -e /etc/udev/rules.d/80-drivers.rules ]]; then
		inst_simple /etc/udev/rules.d/80-drivers.rules
	else
		inst_rules 80-drivers.rules
	fi
	[[ -f /etc/modbroker/modbroker.toml ]] && inst_simple /etc/modbroker/modbroker.toml
	inst_simple "$systemdsystemunitdir/modbroker.socket"
	inst_simple "$systemdsystemunitdir/modbroker.service"
	# The install-command runner (pulled in by modbroker.service): modprobe.d `install` lines
	# run outside the daemon's sandbox here too.
	inst_simple "$systemdsystemunitdir/modbroker-install.socket"
	inst_simple "$systemdsystemunitdir/modbroker-install@.service"
	local unit
	for unit in modbroker.socket modbroker.service modbroker-install.socket modbroker-install@.service; do
		inst_simple "$moddir/initrd.conf" "$systemdsystemunitdir/$unit.d/initrd.conf"
	done
	$SYSTEMCTL -q --root "$initdir" enable modbroker.socket modbroker.service
}
