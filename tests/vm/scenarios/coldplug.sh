#!/bin/sh
# coldplug.sh - one coldplug of the VM by the real systemd-udevd, with the
# kernel's whole module tree, in one of two modes chosen on the kernel command
# line (so both runs use the same initramfs and VM layout):
#   mb.coldplug=builtin  udev's stock 80-drivers.rules (builtin "kmod load")
#   mb.coldplug=broker   udev/80-drivers.rules installed in /etc/udev/rules.d
#                        (it overrides the stock file of the same name), and
#                        modbrokerd --socket /run/modbroker.sock started first
# Then `udevadm trigger --type=devices --action=add` + `udevadm settle`.
#
# Every finit_module/init_module call is traced (syscall tracepoints, enabled
# by /init) together with a kprobe on do_sys_openat2 that records the path of
# every "*.ko*" file opened; a load call is attributed to the module file its
# thread opened last (libkmod, kmod's modprobe and modbrokerd all open the
# file and pass the fd in the same thread).  The module_load tracepoint, which
# fires inside a call that got as far as initialising its module, checks the
# attribution.  This script prints the raw trace as "MB-TRACE:" lines,
# /proc/modules as "MB-MODULE:" lines and the settle time as "MB-COLDPLUG:";
# tests/vm/coldplug-analyze.awk on the host turns them into numbers and
# tests/vm/test-coldplug.sh compares the two modes.  The checks here only
# guard the measurement itself (udev ran, settle finished, trace complete).
# needs: broker
set -u
# shellcheck source=tests/vm/lib.sh
. /lib.sh

mode=$(sed -n 's/.*mb\.coldplug=\([a-z]*\).*/\1/p' /proc/cmdline)
step "coldplug, mode '$mode', $(grep -c ^processor /proc/cpuinfo) cpus, kernel $KVER"
case $mode in
builtin | broker) pass "mode '$mode' from the kernel command line" ;;
*) fail "mode" "kernel command line needs mb.coldplug=builtin|broker"; finish ;;
esac
say "module compression the kernel decompresses itself: $(cat /sys/module/compression 2>/dev/null || echo none)"
say "$(find "$MODDIR/kernel" -name '*.ko*' | wc -l) module files in $MODDIR"

# --- attribution probe: path of every *.ko* file opened, per thread
echo 1 >"$TRACE/options/record-tgid"
echo 16384 >"$TRACE/buffer_size_kb"
check "kprobe on do_sys_openat2" sh -c "echo 'p:mb/mb_open do_sys_openat2 path=+0(%si):ustring' >>$TRACE/kprobe_events"
check "kprobe filter *.ko*" sh -c "echo 'path ~ \"*.ko*\"' >$TRACE/events/mb/mb_open/filter"
check "kprobe enabled" sh -c "echo 1 >$TRACE/events/mb/mb_open/enable"

# --- udev configuration for the mode
mkdir -p /run/udev /etc/udev/rules.d
if [ "$mode" = broker ]; then
	cp /usr/share/modbroker/80-drivers.rules /etc/udev/rules.d/80-drivers.rules
	# Under TCG this coldplug runs 20-50x slower than on hardware: a burst of CPU uevents that
	# takes seconds on a real machine spans minutes here (172 s at 32 vCPUs), so the default
	# 30 s failure window would expire mid-burst. Scale the window with the emulation.
	mkdir -p /etc/modbroker
	printf 'failure_window_secs = 600\n' >/etc/modbroker/modbroker.toml
	if ! start_daemon; then
		fail "modbrokerd started" "see log above"; finish
	fi
	pass "modbrokerd started"
fi
say "active rules touching modules: $(grep -l -E 'kmod load|modbroker load' /lib/udev/rules.d/*.rules /etc/udev/rules.d/*.rules 2>/dev/null | tr '\n' ' ')"
check "rules dir lists 80-drivers.rules as expected for $mode" sh -c \
	"if [ $mode = broker ]; then grep -q 'modbroker load' /etc/udev/rules.d/80-drivers.rules; else [ ! -e /etc/udev/rules.d/80-drivers.rules ]; fi"

cut -d' ' -f1 /proc/modules | sort >/tmp/modules.before
say "$(wc -l </tmp/modules.before) modules loaded before udev starts"

# --- udev
trace_reset
if /lib/systemd/systemd-udevd --daemon; then
	pass "systemd-udevd --daemon started"
else
	fail "systemd-udevd --daemon started" "exit $?"; finish
fi
check "systemd-udevd answers udevadm control --ping" wait_for 60 udevadm control --ping --timeout=5
t0=$(uptime_s)
check "udevadm trigger --type=devices --action=add" udevadm trigger --type=devices --action=add
check "udevadm settle (600 s bound)" udevadm settle --timeout=600
t1=$(uptime_s)
settle=$(elapsed "$t0" "$t1")
say "trigger+settle took ${settle}s"

# Loads started by the kernel or by async driver probing after the queue
# emptied: poll (bounded, 30 s) until the number of traced load calls and
# /proc/modules stay the same over two consecutive 1 s samples.
sample() { echo "$(grep -c -E ' sys_(f?init_module)(\(| ->)' "$TRACE/trace") $(wc -l </proc/modules)"; }
prev=$(sample); stable=0; tries=30
while [ "$stable" -lt 2 ] && [ "$tries" -gt 0 ]; do
	usleep 1000000
	cur=$(sample)
	if [ "$cur" = "$prev" ]; then stable=$((stable + 1)); else stable=0; fi
	prev=$cur; tries=$((tries - 1))
done
check "load activity quiet after settle (30 s bound)" test "$stable" -ge 2

lost=0
for f in "$TRACE"/per_cpu/cpu*/stats; do
	n=$(sed -n 's/^overrun: //p' "$f"); lost=$((lost + ${n:-0}))
done
check_eq "no trace events lost (ring buffer overrun)" 0 "$lost"
[ "$mode" != broker ] || check "modbrokerd still running after settle" daemon_alive

# --- report for the host
echo "MB-COLDPLUG: mode=$mode cpus=$(grep -c ^processor /proc/cpuinfo) kernel=$KVER settle=$settle"
# shellcheck disable=SC2002 # cat: an absent log counts 0 lines
echo "MB-COLDPLUG: client_execs=$(grep 'sched_process_exec:' "$TRACE/trace" | grep -c 'filename=/usr/bin/modbroker ' || true) kernel_modprobe_requests=$(cat /run/kernel-modprobe.log 2>/dev/null | wc -l)"
while read -r m; do echo "MB-MODULE-BEFORE: $m"; done </tmp/modules.before
cut -d' ' -f1,5 /proc/modules | sort | sed 's/^/MB-MODULE: /'
grep -E ' sys_f?init_module(\(| ->)|module_load: |mb_open: ' "$TRACE/trace" | sed 's/^/MB-TRACE: /'
if [ "$mode" = broker ]; then
	mb_run status status --json >/dev/null
	say "modbroker status --json: $(tr -d '\n' <"$MB_OUT" | head -c 600)"
	show_daemon_log 15
	stop_daemon
fi
say "kernel-initiated module requests: $(cut -d' ' -f2- /run/kernel-modprobe.log 2>/dev/null | tr '\n' ';' | head -c 800)"
finish
