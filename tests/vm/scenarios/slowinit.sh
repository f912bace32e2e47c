#!/bin/sh
# slowinit.sh - scale test (issue 15): a slow but healthy init.  64 concurrent
# udev-mode clients (`modbroker load --udev mb_slow`, with SUBSYSTEM and
# DEVPATH set as udev sets them) ask a running modbrokerd for mb_slow, whose
# init sleeps 50 s: longer than the 45 s the client used to wait before
# loading directly.  A live daemon keeps its clients waiting, so: exactly one
# init and one finit_module call, all 64 clients exit 0 with the true outcome
# (one `loaded`, 63 `loaded (merged)`), and no fallback (no client says it
# loads directly, no `modbrokerd` exec'd during the burst: the daemon was
# started before the trace was cleared, so any exec is a `--oneshot`).
# needs: broker
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

N=${MB_BURST:-64}
# The client's bound before the waiting design (UDEV_WAIT): the init must outlast it.
OLD_BOUND=45

step "start modbrokerd"
daemon_up "modbrokerd is listening on $SOCK"

step "burst: $N x modbroker load --udev mb_slow (init sleeps 50 s)"
trace_reset; kmsg_mark
udev_burst "$N" /tmp/sa mb_slow
trace_dump
kmsg_show_since 'mb_slow'
say "client $(exec_span '/modbroker '); finit_module: $(finit_span)"
say "client exit codes: $(cat /tmp/sa/rc.* | sort | uniq -c | tr '\n' ' ')"
say "client 1: $(cat /tmp/sa/out.1) / $(tr '\n' ' ' </tmp/sa/err.1)"
load=$(load_secs)
check "the load (${load}s) outlasted the old ${OLD_BOUND}s bound" \
	awk -v l="$load" -v b="$OLD_BOUND" 'BEGIN{exit !(l + 0 > b)}'
check "every client was running while the load was in flight" burst_overlapped '/modbroker '
check_eq "exactly 1 'mb_slow: init attempt' in dmesg" 1 "$(kmsg_since 'mb_slow: init attempt')"
check_eq "exactly 1 finit_module call" 1 "$(finit_calls)"
check_eq "no init_module call" 0 "$(init_module_calls)"
check_eq "exactly 1 module_load event for mb_slow" 1 "$(module_load_events mb_slow)"
check_eq "mb_slow live" live "$(cat /sys/module/mb_slow/initstate 2>&1)"
check_eq "all $N clients exited 0" "$N" "$(burst_rc_count /tmp/sa 0)"
check_eq "1 client says 'loaded' (unmerged)" 1 "$(burst_out_count /tmp/sa '^mb_slow: loaded \[mb_slow\] in ')"
check_eq "$((N - 1)) clients say 'loaded (merged)'" "$((N - 1))" \
	"$(burst_out_count /tmp/sa '^mb_slow: loaded \[mb_slow\] \(merged\) in ')"
check_eq "no client loaded directly (stderr 'directly')" 0 "$(burst_err_count /tmp/sa directly)"
check_eq "no modbrokerd exec'd (no --oneshot fallback)" 0 "$(exec_count /modbrokerd)"
check "daemon alive" daemon_alive
say "RESULT: $N clients, burst ${BURST_SECS}s, load ${load}s, finit_module $(finit_calls) ($(results_summary finit_module)), fallbacks $(exec_count /modbrokerd)"

show_daemon_log 10
stop_daemon
finish
