#!/bin/sh
# demo.sh - a human-readable demonstration of modbroker on a real kernel:
# starts modbrokerd, fires 64 simultaneous requests for the same failing
# module (mb_fail) and 64 for a module with a dependency (mb_user -> mb_base),
# and shows what the kernel saw: finit_module calls from the syscall trace,
# init lines from dmesg, /proc/modules, and `modbroker status`.
# PASS when each burst cost one finit_module per module.
# needs: broker
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

N=${MB_BURST:-64}
FAIL_PARAMS=${MB_FAIL_PARAMS:-}

step "starting modbrokerd"
daemon_up "modbrokerd is listening on $SOCK"

step "$N clients at once: modbroker load mb_fail${FAIL_PARAMS:+ $FAIL_PARAMS} (init fails with ENODEV)"
trace_reset; kmsg_mark
# shellcheck disable=SC2086 # FAIL_PARAMS: zero or more module parameters, split
burst "$N" /tmp/d1 modbroker load mb_fail $FAIL_PARAMS
echo "  finit_module syscalls seen by the kernel: $(finit_calls)   (results: $(results_summary finit_module))"
echo "  'mb_fail: init attempt' lines in dmesg:   $(kmsg_since 'mb_fail: init attempt')"
echo "  clients that exited non-zero:             $(burst_rc_count /tmp/d1 nonzero) of $N"
echo "  what client 1 printed on stderr:          $(cat /tmp/d1/err.1)"
echo "  client processes: $(exec_span /modbroker)"
trace_dump
check_eq "one finit_module for $N mb_fail requests" 1 "$(finit_calls)"
check_eq "one mb_fail init attempt" 1 "$(kmsg_since 'mb_fail: init attempt')"

step "$N clients at once: modbroker load mb_user (needs mb_base)"
trace_reset; kmsg_mark
burst "$N" /tmp/d2 modbroker load mb_user
echo "  finit_module syscalls seen by the kernel: $(finit_calls)   (results: $(results_summary finit_module))"
echo "  init lines in dmesg: mb_base $(kmsg_since 'mb_base: init'), mb_user $(kmsg_since 'mb_user: init')"
echo "  clients that exited 0:                    $(burst_rc_count /tmp/d2 0) of $N"
echo "  what client 1 printed on stdout:          $(cat /tmp/d2/out.1)"
echo "  client processes: $(exec_span /modbroker)"
trace_dump
kmsg_show_since 'mb_(base|user)'
proc_modules '^mb_'
check_eq "two finit_module calls for $N mb_user requests" 2 "$(finit_calls)"
check_eq "all $N mb_user clients succeeded" "$N" "$(burst_rc_count /tmp/d2 0)"

step "modbroker status"
mb_run s1 status
mb_run s2 status --json
check_eq "status exits 0" 0 "$MB_RC"

stop_daemon
finish
