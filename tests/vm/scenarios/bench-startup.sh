#!/bin/sh
# bench-startup.sh - VM benchmark (run by tests/vm/bench.sh, not by
# run-all.sh): cost of one whole client process asking for a module that is
# already loaded (answered from sysfs), run back to back $MB_BENCH_REPS
# (default 300) times each: udev's command line `modbroker load --udev e1000`
# with this tree's client (static-pie, the fast path) and with an older client
# (/usr/bin/modbroker-old: tests/vm/bench.sh builds it from MB_BENCH_OLD_REV,
# by default the last before the fast path), both against the same daemon; kmod's
# `modprobe -q e1000` (/usr/bin/kmod called through a `modprobe` symlink),
# busybox `modprobe -q e1000`, and `/bin/busybox true` (the floor: fork + exec
# of a static binary from this shell). Both kmod and the old client come in
# through MB_VM_EXTRA_BINS. Prints one "MB-BENCH: startup ..." line per
# command. Passes if every command succeeded every time; timings are
# reported, never judged.  A last round runs the client and kmod's modprobe
# again with /proc/sys/kernel/randomize_va_space at 0 (see the comment there).
# needs: broker
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

REPS=${MB_BENCH_REPS:-300}
MOD=${MB_BENCH_MODULE:-e1000}

daemon_up "daemon started"
mb_run first load "$MOD"
check_eq "$MOD loaded through the broker" 0 "$MB_RC"
check "$MOD in /proc/modules" is_loaded "$MOD"

check "old client in the image (tests/vm/bench.sh puts it there)" test -x /usr/bin/modbroker-old
mkdir -p /tmp/kmod-bin
ln -sf /usr/bin/kmod /tmp/kmod-bin/modprobe
check "kmod modprobe runs" /tmp/kmod-bin/modprobe -q "$MOD"

# loop NAME CMD...: run CMD $REPS times back to back; print ms per call.
loop() {
	name=$1; shift
	fails=0; i=0
	t0=$(uptime_s)
	while [ "$i" -lt "$REPS" ]; do
		"$@" >/dev/null 2>&1 || fails=$((fails + 1))
		i=$((i + 1))
	done
	t1=$(uptime_s)
	ms=$(awk "BEGIN{printf \"%.2f\", ($t1 - $t0) * 1000 / $REPS}")
	echo "MB-BENCH: startup cmd=$name reps=$REPS secs=$(elapsed "$t0" "$t1") ms_per_call=$ms failures=$fails"
	check_eq "$name: no failures" 0 "$fails"
}

step "whole-process cost, $REPS calls each, $MOD already loaded"
loop busybox-true /bin/busybox true
loop modbroker-udev modbroker load --udev "$MOD"
loop modbroker-old-udev modbroker-old load --udev "$MOD"
loop kmod-modprobe /tmp/kmod-bin/modprobe -q "$MOD"
loop busybox-modprobe /bin/busybox modprobe -q "$MOD"
# Second round in reverse order, so drift in the VM shows up.
loop busybox-modprobe /bin/busybox modprobe -q "$MOD"
loop kmod-modprobe /tmp/kmod-bin/modprobe -q "$MOD"
loop modbroker-old-udev modbroker-old load --udev "$MOD"
loop modbroker-udev modbroker load --udev "$MOD"
loop busybox-true /bin/busybox true
# Diagnostic round with address-space randomisation off: under TCG, code is
# translated per (virtual address, physical page), so a position-independent
# binary mapped at a new random address on every exec is translated afresh each
# time, while forked udev workers running kmod in-process reuse their
# translations.  If the gap closes with randomisation off, it is the
# emulator's, not the client's.
echo 0 >/proc/sys/kernel/randomize_va_space
loop modbroker-udev-aslr-off modbroker load --udev "$MOD"
loop kmod-modprobe-aslr-off /tmp/kmod-bin/modprobe -q "$MOD"
echo 2 >/proc/sys/kernel/randomize_va_space
mb_run status status
stop_daemon

finish
