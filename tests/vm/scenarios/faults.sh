#!/bin/sh
# faults.sh - modbroker under faults, on a real kernel (one boot, in order):
#   1. a module whose init hangs (mb_fail delay_ms=$HANG_MS err=0) far past
#      the clients' --timeout: each waiter gets a timed-out reply (exit 1),
#      `status` answers and another module (vfat) loads meanwhile, and the
#      hung init is one finit_module call however many clients asked;
#   2. modbrokerd killed with SIGKILL while a burst's load is in flight:
#      the clients fall back (modbrokerd --oneshot) and end with the true
#      outcome (a succeeding module: all exit 0, loaded once; a failing one:
#      all exit 1 with ENODEV, never EBUSY: direct loaders take turns);
#   3. a restarted daemon answers modules loaded before the restart as
#      already-loaded from sysfs, without a load call;
#   4. depmod run while the daemon serves: a module added to the tree
#      resolves (bounded poll) and loads;
#   5. a module file deleted (ENOENT, no syscall) and a corrupt module file
#      (the kernel's ENOEXEC, one call for a burst), the daemon serving on;
#   6. /proc/sys/kernel/modules_disabled=1 (irreversible, so last): a burst
#      gets EPERM with one finit_module call and one daemon log line.
# needs: broker
# extra-bins: /usr/bin/kmod
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

N=${MB_BURST:-32}
HANG_MS=${MB_HANG_MS:-15000}
NH=${MB_HANG_CLIENTS:-8}
# Clients of the failing SIGKILL burst (2b): their fallback loads take turns,
# each running the 1 s init, so this one is kept smaller than $N.
NK=${MB_KILL_FAIL_CLIENTS:-8}

# A real depmod (kmod is multi-call by argv[0]; busybox's applet is not used).
ln -sf /usr/bin/kmod /tmp/depmod
# shellcheck disable=SC2120 # a wrapper: passes on any arguments; the calls here need none
depmod_real() { /tmp/depmod "$@"; }

# Quiet one-shot client run: sets Q_RC, output in /tmp/q.out, /tmp/q.err.
q_run() { Q_RC=0; modbroker "$@" >/tmp/q.out 2>/tmp/q.err || Q_RC=$?; }

step "setup: mb_ok2 out of the tree, indexes rebuilt by a real depmod"
mv "$MODDIR/extra/mb_ok2.ko" /tmp/mb_ok2.ko
rc=0; depmod_real || rc=$?
check_eq "depmod (kmod) in the VM exits 0" 0 "$rc"
check "mb_ok2 no longer in modules.dep" sh -c "! grep -q mb_ok2 $MODDIR/modules.dep"

step "start modbrokerd"
daemon_up "modbrokerd is listening on $SOCK"

# ---------------------------------------------------------------- 1
step "(1) hanging init: $NH x modbroker load --timeout 2 mb_fail delay_ms=$HANG_MS err=0"
trace_reset; kmsg_mark
burst "$NH" /tmp/b1 modbroker load --timeout 2 mb_fail delay_ms="$HANG_MS" err=0
hang_secs=$BURST_SECS
say "client 1: rc $(cat /tmp/b1/rc.1), stdout: $(cat /tmp/b1/out.1); stderr: $(cat /tmp/b1/err.1)"
check_eq "(1) all $NH clients exited 1 (timed-out)" "$NH" "$(burst_rc_count /tmp/b1 1)"
check_eq "(1) all $NH clients' stdout say timed-out" "$NH" "$(grep -l 'mb_fail: timed-out' /tmp/b1/out.* | wc -l)"
check_eq "(1) all $NH clients' stderr say the load goes on" "$NH" "$(burst_err_count /tmp/b1 'timed out waiting; the load goes on')"
check "(1) the burst ended well before the init (${hang_secs}s < $((HANG_MS / 1000 - 5))s)" \
	awk -v s="$hang_secs" -v l="$((HANG_MS / 1000 - 5))" 'BEGIN{exit !(s < l)}'
check_eq "(1) mb_fail is still initialising (initstate coming)" coming "$(cat /sys/module/mb_fail/initstate 2>&1)"
check_eq "(1) one finit_module call so far (the hung init)" 1 "$(finit_calls)"
mb_run 1s status
check_eq "(1) status answers during the hang (exit 0)" 0 "$MB_RC"
check "(1) status shows mb_fail in flight" grep -q 'in flight: mb_fail' "$MB_OUT"
mb_run 1v load vfat
check_eq "(1) load vfat during the hang: exit 0" 0 "$MB_RC"
check "(1) vfat in /proc/modules" is_loaded vfat
check "(1) fat in /proc/modules" is_loaded fat
check_eq "(1) vfat+fat: 2 more finit_module calls (3 entries), 2 returned 0" "3 2x0" "$(finit_calls) $(results_summary finit_module)"
check_eq "(1) mb_fail still initialising after vfat loaded" coming "$(cat /sys/module/mb_fail/initstate 2>&1)"
say "waiting (bounded, $((HANG_MS / 1000 + 30)) s) for the hung init to end"
rc=0; wait_for $((HANG_MS / 1000 + 30)) grep -qx live /sys/module/mb_fail/initstate || rc=$?
check_eq "(1) mb_fail ends live" 0 "$rc"
trace_dump
check_eq "(1) exactly 3 finit_module calls in the step (mb_fail once, fat, vfat)" 3 "$(finit_calls)"
check_eq "(1) exactly 1 'mb_fail: init attempt'" 1 "$(kmsg_since 'mb_fail: init attempt')"
check_eq "(1) 3 calls returned 0" "3x0" "$(results_summary finit_module)"
say "(1) RESULT: $NH waiters timed out after ${hang_secs}s (exit 1), status+vfat served, finit_module: $(finit_calls) ($(results_summary finit_module))"
check "(1) daemon alive" daemon_alive
rmmod mb_fail
check "(1) mb_fail removed for step 2" sh -c '! grep -q "^mb_fail " /proc/modules'

# ---------------------------------------------------------------- 2
# kill_mid_burst TAG DIR PARAMS...: $N clients load mb_fail PARAMS in the
# background; once the daemon's load is in flight (initstate coming) and 0.5 s
# more, SIGKILL the daemon; wait for every client.
kill_mid_burst() {
	tag=$1 dir=$2; shift 2
	trace_reset; kmsg_mark
	(burst "$N" "$dir" modbroker load mb_fail "$@") &
	bpid=$!
	rc=0; wait_for 60 grep -qx coming /sys/module/mb_fail/initstate || rc=$?
	check_eq "($tag) the daemon's mb_fail load is in flight" 0 "$rc"
	usleep 500000
	killed_at=$(uptime_s)
	kill -9 "$DAEMON_PID"
	say "($tag) SIGKILL to modbrokerd (pid $DAEMON_PID) at ${killed_at}s; $(find "$dir" -name 'rc.*' | wc -l) clients had exited"
	wait "$DAEMON_PID" 2>/dev/null || true
	wait "$bpid" || true
	say "($tag) daemon gone $(elapsed "$killed_at" "$(uptime_s)")s after the kill (clients all done)"
	check "($tag) daemon gone" sh -c "! kill -0 $DAEMON_PID 2>/dev/null"
	trace_dump
	say "($tag) finit_module: $(finit_calls) calls ($(results_summary finit_module)); by comm: $(grep ' sys_finit_module(' "$TRACE/trace" | sed -E 's/^ *(.*)-[0-9]+ +\[.*/\1/' | sort | uniq -c | tr '\n' ' ')"
	say "($tag) client exit codes: $(cat "$dir"/rc.* | sort | uniq -c | tr '\n' ' ')"
	say "($tag) fell back (stderr 'daemon unreachable'): $(burst_err_count "$dir" 'daemon unreachable')"
	say "($tag) client 1: $(cat "$dir/out.1") / $(tr '\n' ' ' <"$dir/err.1")"
}

step "(2a) SIGKILL mid-burst, succeeding module: $N x modbroker load mb_fail delay_ms=2000 err=0"
kill_mid_burst 2a /tmp/b2a delay_ms=2000 err=0
check_eq "(2a) all $N clients exited 0" "$N" "$(burst_rc_count /tmp/b2a 0)"
check "(2a) at least one client fell back ('daemon unreachable')" test "$(burst_err_count /tmp/b2a 'daemon unreachable')" -ge 1
check_eq "(2a) mb_fail live" live "$(cat /sys/module/mb_fail/initstate 2>&1)"
check_eq "(2a) exactly 1 'mb_fail: init attempt' (loaded once)" 1 "$(kmsg_since 'mb_fail: init attempt')"
check_eq "(2a) exactly 1 module_load event for mb_fail" 1 "$(module_load_events mb_fail)"
check_eq "(2a) every finit_module returned 0 or -EEXIST" "" "$(finit_results | grep -vxE '0|-17' | tr '\n' ' ')"
c2a="$(finit_calls) finit_module ($(results_summary finit_module))"
rmmod mb_fail

N_ALL=$N N=$NK
step "(2b) SIGKILL mid-burst, failing module: $N x modbroker load mb_fail delay_ms=1000 (err 19)"
rm -f "$SOCK" # the killed daemon's socket file: start_daemon waits for a new one
rc=0; start_daemon || rc=$?
check_eq "(2b) daemon restarted" 0 "$rc"
kill_mid_burst 2b /tmp/b2b delay_ms=1000
check_eq "(2b) all $N clients exited non-zero" "$N" "$(burst_rc_count /tmp/b2b nonzero)"
check_eq "(2b) no client reports success" 0 "$(grep -lE 'mb_fail: (loaded|already-loaded|builtin|no-match)' /tmp/b2b/out.* 2>/dev/null | wc -l)"
for i in $(seq 1 "$N"); do
	if ! { grep -qE 'ENODEV|EBUSY' "/tmp/b2b/err.$i" && [ "$(cat "/tmp/b2b/rc.$i")" != 0 ]; }; then
		say "(2b) client $i: rc $(cat "/tmp/b2b/rc.$i"), stdout: $(tr '\n' ' ' <"/tmp/b2b/out.$i") stderr: $(tr '\n' ' ' <"/tmp/b2b/err.$i")"
	fi
done
say "(2b) stderr errnos: ENODEV $(burst_err_count /tmp/b2b ENODEV), EBUSY $(burst_err_count /tmp/b2b EBUSY), EEXIST $(burst_err_count /tmp/b2b EEXIST)"
# Fallback clients load without merging.  On 6.1 a load that waited for
# another process's failing load of the same module gets EBUSY (the other
# load's errno is not passed on), so direct loaders of one module take turns
# (flock on the module file): each runs the init itself and reports ENODEV.
check_eq "(2b) all $N clients report ENODEV" "$N" "$(burst_err_count /tmp/b2b ENODEV)"
check_eq "(2b) no finit_module returned EBUSY" 0 "$(finit_results | grep -cx -- -16 || true)"
check "(2b) mb_fail not loaded" sh -c '! grep -q "^mb_fail " /proc/modules'
say "(2b) init attempts (dmesg): $(kmsg_since 'mb_fail: init attempt')"
c2b="$(finit_calls) finit_module ($(results_summary finit_module)), $(kmsg_since 'mb_fail: init attempt') init attempts"
N=$N_ALL

# ---------------------------------------------------------------- 3
step "(3) restarted daemon: state from sysfs"
rm -f "$SOCK"
rc=0; start_daemon || rc=$?
check_eq "(3) daemon restarted" 0 "$rc"
trace_reset
for m in vfat fat; do
	mb_run 3$m load $m
	check_eq "(3) load $m: exit 0" 0 "$MB_RC"
	check "(3) load $m: already-loaded" grep -q "^$m: already-loaded" "$MB_OUT"
done
check_eq "(3) no finit_module/init_module call" 0 "$(load_calls)"

# ---------------------------------------------------------------- 4
step "(4) depmod while the daemon serves: mb_ok2 added to the tree"
trace_reset
mb_run 4a load mb_ok2
check_eq "(4) before depmod: exit 0" 0 "$MB_RC"
check "(4) before depmod: no-match" grep -q '^mb_ok2: no-match' "$MB_OUT"
mv /tmp/mb_ok2.ko "$MODDIR/extra/mb_ok2.ko"
rc=0; depmod_real || rc=$?
check_eq "(4) depmod exits 0" 0 "$rc"
check "(4) mb_ok2 in modules.dep" grep -q '^extra/mb_ok2.ko:' "$MODDIR/modules.dep"
t0=$(uptime_s); tries=0
while :; do
	tries=$((tries + 1))
	q_run load mb_ok2
	grep -q '^mb_ok2: loaded' /tmp/q.out && break
	[ "$tries" -lt 50 ] || break
	usleep 200000
done
sed 's/^/  stdout: /' /tmp/q.out
say "(4) mb_ok2 resolved after $tries requests, $(elapsed "$t0" "$(uptime_s)")s after depmod"
check_eq "(4) after depmod: exit 0" 0 "$Q_RC"
check "(4) after depmod: loaded" grep -q '^mb_ok2: loaded' /tmp/q.out
check "(4) mb_ok2 in /proc/modules" is_loaded mb_ok2
check_eq "(4) exactly 1 finit_module call" 1 "$(finit_calls)"

# ---------------------------------------------------------------- 5
step "(5a) module file deleted: extra/mb_ok.ko (still in modules.dep)"
rm "$MODDIR/extra/mb_ok.ko"
trace_reset
mb_run 5a load mb_ok
check_eq "(5a) exit 1" 1 "$MB_RC"
check "(5a) stderr names the missing file's errno (ENOENT)" grep -q ENOENT "$MB_ERR"
check_eq "(5a) no finit_module call" 0 "$(finit_calls)"
check "(5a) mb_ok not loaded" sh -c '! grep -q "^mb_ok " /proc/modules'
check "(5a) daemon alive" daemon_alive
mb_run 5s status
check_eq "(5a) status answers" 0 "$MB_RC"

step "(5b) corrupt module file: extra/mb_base.ko replaced by text; $N x modbroker load mb_base"
echo "this is not an ELF module" >"$MODDIR/extra/mb_base.ko"
trace_reset; kmsg_mark
burst "$N" /tmp/b5 modbroker load mb_base
trace_dump
say "(5b) client 1: $(cat /tmp/b5/err.1)"
check_eq "(5b) all $N clients exited 1" "$N" "$(burst_rc_count /tmp/b5 1)"
check_eq "(5b) all $N clients' stderr say ENOEXEC" "$N" "$(burst_err_count /tmp/b5 ENOEXEC)"
check_eq "(5b) exactly 1 finit_module call" 1 "$(finit_calls)"
check_eq "(5b) the kernel returned -8 (ENOEXEC)" "-8" "$(finit_results)"
kmsg_show_since 'mb_base|ELF|module'
check "(5b) daemon alive" daemon_alive

# ---------------------------------------------------------------- 6
step "(6) modules_disabled=1; $N x modbroker load e1000"
echo 1 >/proc/sys/kernel/modules_disabled
check_eq "(6) modules_disabled is 1" 1 "$(cat /proc/sys/kernel/modules_disabled)"
log_before=$(grep -c 'load failed' "$DAEMON_LOG" || true)
trace_reset
burst "$N" /tmp/b6 modbroker load e1000
trace_dump
say "(6) client 1: $(cat /tmp/b6/err.1)"
check_eq "(6) all $N clients exited 1" "$N" "$(burst_rc_count /tmp/b6 1)"
check_eq "(6) all $N clients' stderr say EPERM" "$N" "$(burst_err_count /tmp/b6 EPERM)"
check_eq "(6) exactly 1 finit_module call" 1 "$(finit_calls)"
check_eq "(6) the kernel returned -1 (EPERM)" "-1" "$(finit_results)"
mb_run 6b load e1000
check_eq "(6) a late request: exit 1, no new call" "1 1" "$MB_RC $(finit_calls)"
log_after=$(grep -c 'load failed' "$DAEMON_LOG" || true)
check_eq "(6) one daemon 'load failed' log line" 1 "$((log_after - log_before))"
grep 'load failed' "$DAEMON_LOG" | tail -n 1 | sed "s/$(printf '\033')\[[0-9;]*m//g; s/^/  modbrokerd: /"
mb_run 6s status
check_eq "(6) status answers" 0 "$MB_RC"
check "(6) e1000 not loaded" sh -c '! grep -q "^e1000 " /proc/modules'
check "(6) daemon alive" daemon_alive

step "summary"
say "(1) hang: $NH timed-out replies in ${hang_secs}s, 1 finit_module for mb_fail"
say "(2a) kill, succeeding module: $c2a"
say "(2b) kill, failing module: $c2b"
show_daemon_log 20
stop_daemon
finish
