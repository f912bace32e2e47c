#!/bin/sh
# wedged.sh - scale test (issue 15): a daemon wedged mid-load.  64 concurrent
# udev-mode clients ask modbrokerd for mb_slow (init sleeps 50 s); once the
# daemon holds all 64 requests and its load is in flight (initstate
# `coming`), it is stopped with SIGSTOP.  The clients must take it for
# unresponsive after one LIVENESS_BOUND of silence (no earlier: it sent
# progress lines until it stopped), fall back to `modbrokerd --oneshot`, and
# the fallbacks must wait for the daemon's load (initstate `coming` -> `live`)
# instead of calling finit_module: one init, one finit_module call (the
# daemon's thread's), all 64 exit 0 with mb_slow loaded, and the burst ends
# within LIVENESS_BOUND + the load + SLACK.  The first fallbacks leave
# /run/modbroker/unresponsive; a client started once it exists (and the
# burst's fallbacks are running) falls back at once: well under the bound (at
# most half of it, as under TCG on a busy host a client's exec alone can take
# seconds; without the marker it would wait the whole bound).  Then SIGCONT: the daemon removes the marker
# and answers again.
# The checks follow the code's LIVENESS_BOUND and PROGRESS_INTERVAL
# (src/protocol.rs, read when the image is built: the "# consts:" line).
# needs: broker
# consts: LIVENESS_BOUND PROGRESS_INTERVAL
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

N=${MB_BURST:-64}
BOUND=${LIVENESS_BOUND:?/etc/mb-vm.conf has no LIVENESS_BOUND}
INTERVAL=${PROGRESS_INTERVAL:?/etc/mb-vm.conf has no PROGRESS_INTERVAL}
# SLACK (s): allowed on top of the bound for 64 clients under TCG on 4 vCPUs
# to notice the silence and exec their fallbacks, and on top of the load's
# end for those fallbacks to see mb_slow live and exit.
SLACK=${MB_SLACK:-10}
# The boot-wide marker beside the socket (protocol.rs: unresponsive_marker).
MARKER=${SOCK%.sock}/unresponsive

step "start modbrokerd"
daemon_up "modbrokerd is listening on $SOCK"

step "burst: $N x modbroker load --udev mb_slow, then SIGSTOP to modbrokerd mid-load"
trace_reset; kmsg_mark
udev_env
(udev_burst "$N" /tmp/wb mb_slow; echo "$BURST_SECS" >/tmp/wb.secs) &
bpid=$!
rc=0; wait_for 60 in_flight_waiting mb_slow "$N" || rc=$?
check_eq "the daemon holds all $N requests, its mb_slow load in flight (coming)" 0 "$rc"
trace_mark "mb: SIGSTOP"
kill -STOP "$DAEMON_PID"
stop_t=$(trace_time first 'tracing_mark_write: mb: SIGSTOP')
say "SIGSTOP to modbrokerd (pid $DAEMON_PID) at trace time ${stop_t}s; bound ${BOUND}s, progress every ${INTERVAL}s, slack ${SLACK}s"

rc=0; wait_for $((BOUND + SLACK)) test -e "$MARKER" || rc=$?
trace_mark "mb: marker wait over ($rc)"
check_eq "a client left $MARKER within bound + slack of SIGSTOP" 0 "$rc"
say "marker wait over (rc $rc: 0 = seen) $(secs_diff "$stop_t" "$(trace_time first 'mb: marker wait over')")s after SIGSTOP"

# The late client starts once the burst's fallbacks have all been exec'd, so
# that its time measures its own decision, not 64 execs competing for the CPUs.
rc=0; wait_for "$SLACK" execs_reach /modbrokerd "$N" || rc=$?
check_eq "all $N fallbacks exec'd within slack of the marker" 0 "$rc"

step "late client: modbroker load --udev mb_slow once the marker exists"
check_eq "mb_slow still coming when the late client starts" coming "$(cat /sys/module/mb_slow/initstate 2>&1)"
trace_mark "mb: late client"
say "late client starts; loadavg $(cat /proc/loadavg)"
late_t0=$(uptime_s)
(rc=0; modbroker load --udev mb_slow >/tmp/late.out 2>/tmp/late.err || rc=$?; echo "$rc" >/tmp/late.rc) &
latepid=$!
rc=0; wait_for "$BOUND" grep -q directly /tmp/late.err || rc=$?
late_secs=$(elapsed "$late_t0" "$(uptime_s)")
check_eq "late client fell back (stderr 'directly')" 0 "$rc"
check "late client fell back at once (${late_secs}s <= bound/2 = $((BOUND / 2))s)" secs_le "$late_secs" $((BOUND / 2))

wait "$bpid" || true
wait "$latepid" || true
trace_mark "mb: burst done"
wb_secs=$(cat /tmp/wb.secs)
trace_dump
kmsg_show_since 'mb_slow'
fb_first=$(secs_diff "$stop_t" "$(trace_time first 'sched_process_exec:.*filename=[^ ]*/modbrokerd ')")
# The burst's fallbacks are the first N (the late client started after them).
fb_last=$(secs_diff "$stop_t" "$(trace_time "$N" 'sched_process_exec:.*filename=[^ ]*/modbrokerd ')")
late_fb=$(secs_diff "$(trace_time first 'mb: late client')" "$(trace_time $((N + 1)) 'sched_process_exec:.*filename=[^ ]*/modbrokerd ')")
late_exec=$(secs_diff "$(trace_time first 'mb: late client')" "$(trace_time_after 'mb: late client' 'filename=[^ ]*/modbroker ')")
load=$(load_secs)
tail_s=$(secs_diff "$(trace_time last ' sys_finit_module -> ')" "$(trace_time last 'mb: burst done')")
say "fallback execs: $(exec_count /modbrokerd); the burst's ${fb_first}s to ${fb_last}s after SIGSTOP; the late client's ${late_fb}s after it started (its own exec took ${late_exec}s)"
say "burst ${wb_secs}s; load ${load}s; burst done ${tail_s}s after the load returned"
say "client exit codes: $(cat /tmp/wb/rc.* | sort | uniq -c | tr '\n' ' ')"
say "client 1: $(cat /tmp/wb/out.1) / $(tr '\n' ' ' </tmp/wb/err.1)"
say "late client: rc $(cat /tmp/late.rc), $(cat /tmp/late.out) / $(tr '\n' ' ' </tmp/late.err)"

check_eq "exactly 1 'mb_slow: init attempt' in dmesg" 1 "$(kmsg_since 'mb_slow: init attempt')"
check_eq "exactly 1 finit_module call" 1 "$(finit_calls)"
check_eq "no init_module call" 0 "$(init_module_calls)"
check "the finit_module call is the daemon's (a thread of pid $DAEMON_PID)" \
	test -d "/proc/$DAEMON_PID/task/$(finit_tid | head -n1)"
check_eq "exactly 1 module_load event for mb_slow" 1 "$(module_load_events mb_slow)"
check_eq "mb_slow live" live "$(cat /sys/module/mb_slow/initstate 2>&1)"
check_eq "all $N clients exited 0" "$N" "$(burst_rc_count /tmp/wb 0)"
check_eq "all $N clients say mb_slow loaded or already-loaded" "$N" \
	"$(burst_out_count /tmp/wb '^mb_slow: (loaded|already-loaded) ')"
check_eq "all $N clients fell back (stderr 'directly')" "$N" "$(burst_err_count /tmp/wb directly)"
check_eq "$((N + 1)) fallbacks exec'd (the burst's and the late client's)" $((N + 1)) "$(exec_count /modbrokerd)"
check "no fallback before one bound of silence (first ${fb_first}s >= bound - 2 x interval after SIGSTOP)" \
	secs_le $((BOUND - 2 * INTERVAL)) "$fb_first"
check "the burst's fallbacks within bound + slack (last ${fb_last}s <= $((BOUND + SLACK))s after SIGSTOP)" \
	secs_le "$fb_last" $((BOUND + SLACK))
check "the burst (${wb_secs}s) within bound + load + slack ($BOUND + $load + $SLACK s)" \
	secs_le "$wb_secs" "$(awk -v l="$load" -v b="$BOUND" -v s="$SLACK" 'BEGIN{print b + l + s}')"
check "every client done within slack of the load's return (${tail_s}s)" secs_le "$tail_s" "$SLACK"
check_eq "late client exited 0" 0 "$(cat /tmp/late.rc)"
check "late client says mb_slow loaded or already-loaded" grep -Eq '^mb_slow: (loaded|already-loaded) ' /tmp/late.out

step "SIGCONT: the daemon answers again and removes the marker"
kill -CONT "$DAEMON_PID"
trace_reset
rc=0; wait_for $((2 * INTERVAL + SLACK)) test ! -e "$MARKER" || rc=$?
check_eq "the daemon removed $MARKER" 0 "$rc"
mb_run cont load --udev mb_slow
check_eq "load --udev mb_slow: exit 0" 0 "$MB_RC"
check "answered already-loaded" grep -q '^mb_slow: already-loaded' "$MB_OUT"
check_eq "through the daemon (no stderr 'directly')" 0 "$(grep -c directly "$MB_ERR" || true)"
check_eq "no fallback exec'd" 0 "$(exec_count /modbrokerd)"
check_eq "no load call" 0 "$(load_calls)"
mb_run st status
check_eq "status answers" 0 "$MB_RC"
check "daemon alive" daemon_alive
say "RESULT: $N clients, burst ${wb_secs}s (bound ${BOUND}s, load ${load}s, slack ${SLACK}s), fallbacks ${fb_first}-${fb_last}s after SIGSTOP, late client fell back in ${late_secs}s, finit_module calls for the burst: 1 expected"

show_daemon_log 15
stop_daemon
finish
