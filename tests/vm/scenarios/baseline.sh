#!/bin/sh
# baseline.sh - the no-broker comparison for the README: 64 concurrent plain
# `insmod mb_fail.ko` (what 64 udev workers each running their own load
# would do), counting module-load syscalls (finit_module, plus busybox
# insmod's init_module fallback), their results, and mb_fail init attempts.
# PASSes as long as the burst ran and the counts were collected.
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

N=${MB_BURST:-64}
step "baseline: $N concurrent insmod mb_fail.ko (no broker)"
trace_reset; kmsg_mark
burst "$N" /tmp/base insmod "$MODDIR/extra/mb_fail.ko"
finit=$(finit_calls); initm=$(init_module_calls)
attempts=$(kmsg_since 'mb_fail: init attempt')
say "finit_module calls: $finit (results: $(results_summary finit_module))"
say "init_module calls (busybox fallback): $initm (results: $(results_summary init_module))"
say "module_load events: $(module_load_events mb_fail)"
say "finit_module timing: $(finit_span)"
say "mb_fail init attempts (dmesg): $attempts"
say "copies exiting non-zero: $(burst_rc_count /tmp/base nonzero) of $N"
say "stderr kinds: $(cat /tmp/base/err.* | sed 's/.*: //' | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
echo "MB-BASELINE: requests=$N finit_module=$finit init_module=$initm init_attempts=$attempts secs=$BURST_SECS"
check_eq "all $N copies finished" "$N" "$(find /tmp/base -name 'rc.*' | wc -l)"
check_eq "$N finit_module calls traced" "$N" "$finit"

step "baseline: $N concurrent insmod mb_user.ko + mb_base (no broker)"
# insmod knows no dependencies: each copy loads mb_base then mb_user, which
# is what N independent modprobe-like loaders without coordination do.
trace_reset; kmsg_mark
burst "$N" /tmp/base2 sh -c "insmod $MODDIR/extra/mb_base.ko; insmod $MODDIR/extra/mb_user.ko"
say "finit_module calls: $(finit_calls) (results: $(results_summary finit_module))"
say "init_module calls: $(init_module_calls) (results: $(results_summary init_module))"
say "init lines: mb_base $(kmsg_since 'mb_base: init'), mb_user $(kmsg_since 'mb_user: init')"
echo "MB-BASELINE: requests=$N(mb_base+mb_user) finit_module=$(finit_calls) init_module=$(init_module_calls) secs=$BURST_SECS"
check "mb_user loaded" is_loaded mb_user
proc_modules '^mb_'

finish
