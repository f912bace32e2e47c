#!/bin/sh
# Per-boot check of the broker and upgrade cases (run by mbtest-report): an upgrade while the
# daemon serves. Two clients ask without fallback (an unreachable daemon would be exit 4) in a
# loop while `dpkg -i` installs /root/modbroker.deb over the installed package (the same one in
# the broker case, the previous release in the upgrade case), whose postinst try-restarts
# modbroker.service; the socket stays open, so each request must be answered, by the old daemon
# or by the new one. Then where the package left 80-drivers.rules (rule-state.sh).
# Skip markers (modbroker::skip), before the upgrade restarts the boot's daemon: what coldplug
# left, and udev's rule reading them (`udevadm test` lists the programs an add would run).
markers=0 resolving=0
for m in /run/modbroker/skip/*; do
	[ -L "$m" ] || continue
	markers=$((markers + 1))
	[ -e "$m" ] && resolving=$((resolving + 1))
done
echo "skip: coldplug left $markers markers, $resolving resolve"
[ "$resolving" -gt 0 ] && echo "skip: coldplug left resolving markers"
runs_client() { udevadm test --action=add /devices/platform/pcspkr 2>&1 | grep -q 'modbroker load'; }
marker=/run/modbroker/skip/$(cat /sys/devices/platform/pcspkr/modalias 2>/dev/null)
if grep -q '^pcspkr ' /proc/modules && [ -e "$marker" ] && ! runs_client; then
	echo "skip: pcspkr loaded, its marker resolves, udev runs no client"
fi
rmmod pcspkr
if [ ! -e "$marker" ] && runs_client; then
	echo "skip: pcspkr unloaded, its marker dangles, udev runs the client"
fi
# modprobe, not a trigger: the boot's checks count modbrokerd's calls, one per module.
modprobe pcspkr
if grep -q '^pcspkr ' /proc/modules && [ -e "$marker" ]; then
	echo "skip: pcspkr loaded again, its marker resolves again"
fi
# A modprobe.d change: the daemon reloads (inotify), and no marker resolves any more.
touch /etc/modprobe.d/mbtest-skip.conf
tries=0
while [ -e "$marker" ] && [ "$tries" -lt 300 ]; do
	sleep 0.1
	tries=$((tries + 1))
done
[ ! -e "$marker" ] && echo "skip: a modprobe.d change made the markers stop resolving"
rm -f /etc/modprobe.d/mbtest-skip.conf

mod=$(cut -d' ' -f1 /proc/modules | head -n1)
stop=/run/mbtest-upgrade.stop
rm -f "$stop" /run/mbtest-upgrade.*
before=$(systemctl show -p MainPID --value modbroker.service)
socket_before=$(systemctl show -p ActiveEnterTimestampMonotonic --value modbroker.socket)
for i in 1 2; do
	(
		n=0 bad=0
		while [ ! -e "$stop" ]; do
			modbroker load --no-fallback --udev "$mod" >/dev/null 2>>/run/mbtest-upgrade.err || bad=$((bad + 1))
			n=$((n + 1))
		done
		echo "$n $bad" >"/run/mbtest-upgrade.$i"
	) &
done
# --no-triggers: the initramfs rebuild the trigger asks for is not what this step tests, and
# under emulation it takes minutes.
dpkg --no-triggers -i /root/modbroker.deb >/run/mbtest-dpkg.log 2>&1
echo "dpkg -i exit $?"
after=$(systemctl show -p MainPID --value modbroker.service)
socket_after=$(systemctl show -p ActiveEnterTimestampMonotonic --value modbroker.socket)
echo "modbroker.socket active since $socket_before us before the upgrade, $socket_after us after"
[ "$socket_before" = "$socket_after" ] && [ "$(systemctl is-active modbroker.socket)" = active ] &&
	echo "upgrade: the socket stayed open"
/etc/mbtest/rule-state.sh
# One more answered request after the restart, then stop the loops.
modbroker load --no-fallback --udev "$mod" >/dev/null && touch "$stop"
touch "$stop"
wait
cat /run/mbtest-upgrade.err 2>/dev/null
total=$(cat /run/mbtest-upgrade.[12] | awk '{ n += $1; bad += $2 } END { print n + 0, bad + 0 }')
echo "daemon pid before $before, after $after; requests and failures: $total"
# shellcheck disable=SC2086 # split "N BAD" into $1 $2
set -- $total
if [ "$before" != "$after" ] && [ "$1" -gt 0 ] && [ "$2" = 0 ]; then
	echo "upgrade: all answered ($1 requests across the restart)"
fi

# An install line through the daemon runs in modbroker-install@.service, outside the daemon's
# sandbox (/etc/modprobe.d/mbtest-install.conf: writes /run, /sys and /proc/sys, prints).
rm -f /run/mbtest-install.ran
modbroker load --no-fallback mbtest_install_probe
rc=$?
echo "install through the daemon: exit $rc"
[ "$rc" = 0 ] && [ "$(cat /run/mbtest-install.ran 2>/dev/null)" = mbtest_install_probe ] &&
	echo "install: ran outside the sandbox"
journalctl -b --no-pager -u 'modbroker-install@*' | grep -q 'mbtest-install-stdout mbtest_install_probe' &&
	echo "install: stdout in the journal"
# Control: without the runner's socket the daemon runs the line itself, inside its sandbox.
systemctl stop modbroker-install.socket
rm -f /run/mbtest-install.ran
modbroker load --no-fallback mbtest_install_probe
rc=$?
echo "install inside the sandbox: exit $rc"
[ "$rc" != 0 ] && echo "install control: fails inside the sandbox"
systemctl start modbroker-install.socket
