# coldplug-analyze.awk - turn the console log of one coldplug run
# (scenarios/coldplug.sh) into "key=value" lines; POSIX awk (mawk is fine).
#
#   awk -f tests/vm/coldplug-analyze.awk build/vm/coldplug-builtin-8.log
#
# Input lines used (a trailing \r from the serial console is ignored):
#   MB-COLDPLUG: k=v ...          settle time, mode, cpus, kernel, client execs
#   MB-MODULE-BEFORE: NAME        /proc/modules before udev started
#   MB-MODULE: NAME STATE         /proc/modules after settle
#   MB-TRACE: <ftrace line>       sys_{enter,exit}_{finit,init}_module,
#                                 module:module_load, kprobe mb_open (path)
# Attribution: a load call belongs to the last "*.ko*" file its thread (the
# trace's pid field is the thread id) opened before the call.  module_load
# events inside a call (same thread, between its entry and exit) must name
# the same module, else the call counts in attrib_mismatch.
# "EEXIST for an already-live module": the call returned -EEXIST and the module
# was in /proc/modules before udev started or a successful load of it had
# *returned* before this call was entered (so it was certainly live; calls
# that overlap the successful one are concurrent duplicates instead).
# Output keys: mode cpus kernel settle finit init calls r_<RESULT> (one per
# result seen: r_0, r_EEXIST, ...), distinct_attempted, modules_loaded
# (modules in /proc/modules after minus before), modules_after, loaded_list,
# eexist_live, eexist_concurrent, ebusy, unattributed, attrib_mismatch,
# client_execs, kernel_modprobe_requests, load_events, after_list (all of
# /proc/modules after settle, sorted by the VM), by_comm (calls per calling
# task name, "name:N,..."), first_call and last_end (trace timestamps of the
# first call's entry and the last call's return), udev_modules (modules that
# udev's own processes called a load for), modbrokerd_processes (processes
# named modbrokerd that made load calls: the daemon, plus one per fallback
# loader; the thread-group id needs the record-tgid trace option),
# modbrokerd_calls, modbrokerd_distinct and modbrokerd_modules (its calls, and the distinct modules
# they were for), modbrokerd_retries_after_window (its calls for a module whose previous call
# failed at least failure_window seconds, default 30, before: the daemon's documented retry).
# The real-boot tests (tests/boot) feed it one phase of a boot's trace each.

BEGIN { if (failure_window == "") failure_window = 30 }

function errname(e) {
	if (e == 0) return "0"
	if (e == 1) return "EPERM"; if (e == 2) return "ENOENT"; if (e == 8) return "ENOEXEC"
	if (e == 12) return "ENOMEM"; if (e == 13) return "EACCES"; if (e == 14) return "EFAULT"
	if (e == 16) return "EBUSY"; if (e == 17) return "EEXIST"; if (e == 19) return "ENODEV"
	if (e == 22) return "EINVAL"; if (e == 61) return "ENODATA"; if (e == 95) return "EOPNOTSUPP"
	if (e == 110) return "ETIMEDOUT"; if (e == 524) return "ENOTSUPP"
	return "E" e
}
function hexval(h,    i, v, c) {
	v = 0
	for (i = 1; i <= length(h); i++) { c = index("0123456789abcdef", substr(h, i, 1)) - 1; v = v * 16 + c }
	return v
}
# return value of "sys_x -> 0x...": 0 / positive, or the errno as a negative number
function retval(h) {
	if (length(h) == 16 && substr(h, 1, 8) == "ffffffff") return hexval(substr(h, 9)) - 4294967296
	return hexval(h)
}
function modname(path,    n) {
	n = path; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n); gsub(/-/, "_", n); return n
}
{ sub(/\r$/, "") }
/^MB-COLDPLUG: / {
	for (i = 2; i <= NF; i++) { split($i, kv, "="); info[kv[1]] = substr($i, length(kv[1]) + 2) }
	next
}
/^MB-MODULE-BEFORE: / { before[$2] = 1; next }
/^MB-MODULE: / { after[$2] = 1; nafter++; alist = alist (alist == "" ? "" : ",") $2; next }
/^MB-TRACE: / {
	# thread id: "comm-TID (TGID) [CPU]" (tgid column when record-tgid is on)
	if (!match($0, /-[0-9]+ +(\( *[-0-9]+\) +)?\[[0-9]+\]/)) next
	s = substr($0, RSTART + 1, RLENGTH - 1); tid = s; sub(/ .*/, "", tid)
	comm = substr($0, 1, RSTART - 1); sub(/^MB-TRACE: +/, "", comm); sub(/^ +/, "", comm)
	tgid = s; if (!sub(/^[0-9]+ +\( */, "", tgid)) tgid = tid; sub(/[^0-9].*/, "", tgid)
	ts = ""
	for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { ts = substr($i, 1, length($i) - 1) + 0; break }
	if ($0 ~ /mb_open: /) {
		p = $0; sub(/.*path="/, "", p); sub(/".*/, "", p)
		lastopen[tid] = modname(p); next
	}
	if ($0 ~ /module_load: /) {
		m = $0; sub(/.*module_load: /, "", m); sub(/ .*/, "", m)
		load_events++
		if (tid in pending && call_mod[pending[tid]] != m) mismatch[pending[tid]] = 1
		next
	}
	if (match($0, /sys_(f?init_module)\(/)) {
		n++
		call_sys[n] = ($0 ~ /sys_finit_module\(/) ? "finit" : "init"
		call_tid[n] = tid; call_t0[n] = ts; call_comm[n] = comm
		if (comm == "modbrokerd" && !(tgid in broker_procs)) { broker_procs[tgid] = 1; nbroker_procs++ }
		call_mod[n] = (tid in lastopen) ? lastopen[tid] : "?"
		delete lastopen[tid]
		pending[tid] = n
		next
	}
	if (match($0, /sys_f?init_module -> 0x[0-9a-f]+/)) {
		h = $0; sub(/.*-> 0x/, "", h); sub(/[^0-9a-f].*/, "", h)
		if (!(tid in pending)) { orphan_exits++; next }
		c = pending[tid]; delete pending[tid]
		call_ret[c] = retval(h); call_t1[c] = ts; call_done[c] = 1
	}
}
END {
	for (c = 1; c <= n; c++) {
		m = call_mod[c]
		if (call_done[c] && call_ret[c] == 0 && (!(m in live_t) || call_t1[c] < live_t[m])) live_t[m] = call_t1[c]
	}
	for (c = 1; c <= n; c++) {
		m = call_mod[c]
		if (call_sys[c] == "finit") finit++; else init++
		by_comm[call_comm[c]]++
		if (call_comm[c] == "modbrokerd") {
			broker_calls++
			if (!(m in broker_attempted)) { broker_attempted[m] = 1; broker_distinct++; broker_mods = broker_mods (broker_mods == "" ? "" : ",") m }
			# A module that failed is tried again by design once its failure window has passed.
			if ((m in broker_end) && broker_ret[m] < 0 && call_t0[c] - broker_end[m] >= failure_window) broker_retries++
			if (call_done[c]) { broker_end[m] = call_t1[c]; broker_ret[m] = call_ret[c] }
		}
		if (call_comm[c] ~ /udev/ && !((m, "udev") in seen_udev)) { seen_udev[m, "udev"] = 1; udev_mods = udev_mods (udev_mods == "" ? "" : ",") m }
		if (c == 1 || call_t0[c] < first_call) first_call = call_t0[c]
		if (call_done[c] && call_t1[c] > last_end) last_end = call_t1[c]
		r = call_done[c] ? errname(call_ret[c] < 0 ? -call_ret[c] : 0) : "unfinished"
		res[r]++
		if (m == "?") unattributed++
		else if (!(m in attempted)) { attempted[m] = 1; distinct++ }
		if (c in mismatch) mismatches++
		if (r == "EEXIST") {
			if ((m in before) || ((m in live_t) && live_t[m] < call_t0[c])) eexist_live++
			else eexist_concurrent++
		}
	}
	for (m in after) if (!(m in before)) { loaded++; list = list (list == "" ? "" : ",") m }
	print "mode=" info["mode"]; print "cpus=" info["cpus"]; print "kernel=" info["kernel"]
	print "settle=" info["settle"]
	print "finit=" finit + 0; print "init=" init + 0; print "calls=" n + 0
	for (r in res) print "r_" r "=" res[r]
	print "distinct_attempted=" distinct + 0
	print "modules_loaded=" loaded + 0; print "modules_after=" nafter + 0
	print "eexist_live=" eexist_live + 0; print "eexist_concurrent=" eexist_concurrent + 0
	print "ebusy=" res["EBUSY"] + 0
	print "unattributed=" unattributed + 0; print "attrib_mismatch=" mismatches + 0
	print "orphan_exits=" orphan_exits + 0; print "load_events=" load_events + 0
	print "client_execs=" info["client_execs"]; print "kernel_modprobe_requests=" info["kernel_modprobe_requests"]
	for (k in by_comm) comms = comms (comms == "" ? "" : ",") k ":" by_comm[k]
	print "by_comm=" comms
	print "udev_modules=" udev_mods
	print "modbrokerd_processes=" nbroker_procs + 0
	print "modbrokerd_calls=" broker_calls + 0; print "modbrokerd_distinct=" broker_distinct + 0
	print "modbrokerd_retries_after_window=" broker_retries + 0
	print "modbrokerd_modules=" broker_mods
	print "first_call=" first_call; print "last_end=" last_end + 0
	print "loaded_list=" list
	print "after_list=" alist
}
