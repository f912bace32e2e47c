#!/bin/bash
# startup.sh - what the daemon's start-up consists of, per phase, from booted cases' results:
# the trace (trace-modbroker: the daemon's execs and file opens), systemctl show (units) and
# PID 1's journal (journal-pid1.json). Prints one markdown row per case and phase (ms), then the
# median of each column per image and phase.
#
#   tests/boot/startup.sh [CASEDIR...]   default: every build/boot/*/*-broker (run.sh's results)
#
# Marks, for the phase's daemon (its first exec of modbrokerd), in trace time (CLOCK_MONOTONIC):
#   spawn    its process's first traced event (systemd's fork: the child, or systemd-executor)
#   sandbox  its first namespace step (/proc/self/ns/, the unit's mount root)
#   mounted  its last open under the mount root or a namespace-* directory
#   exec     its exec of modbrokerd
#   config   its open of /etc/modbroker/modbroker.toml
#   kmod     the first open by its resolver thread (modbroker-kmod: modprobe.d, /proc/cmdline)
#   indexes  the last of its first opens of modules.*.bin (kmod_load_resources)
#   logged   its "modbrokerd ready" journal line, sent just before READY=1 (the time it was sent:
#            journald may receive it later)
#   ready    READY: ActiveEnterTimestamp in the root, PID 1's "Started" line in a dracut initrd
#            (journal, or kernel log: the printk clock may differ from the trace's by a little);
#            an initramfs-tools daemon has no READY nor journal (it binds its socket right after
#            `indexes`): its row ends there
# A mark not seen (no sandbox under initramfs-tools) takes the next one's time.
set -euo pipefail
cd "$(dirname "$0")/../.."
dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || mapfile -t dirs < <(ls -d build/boot/*/*-broker 2>/dev/null)
[ ${#dirs[@]} -gt 0 ] || { echo "startup: no results: run tests/boot/run.sh first" >&2; exit 1; }

# marks DIR PHASE: "spawn sandbox mounted exec config kmod indexes logged ready" in us.
marks() {
	local dir=$1 phase=$2 r=$1/results b ready=0 logged
	b=$(awk -v b="$(sed -n 's/^boundary=//p' "$dir/summary")" 'BEGIN { printf "%.0f", b * 1e6 }')
	if [ "$phase" = root ]; then
		ready=$(awk -F= '$1 == "Id" { id = $2 } id == "modbroker.service" && $1 == "ActiveEnterTimestampMonotonic" { print $2 }' "$r/units")
	elif [ -s "$r/journal-pid1.json" ]; then
		# PID 1's "Started" line, in the journal or (logged before journald ran) the kernel log.
		ready=$(jq -rs --argjson b "$b" '
			def ts: (._SOURCE_MONOTONIC_TIMESTAMP // .__MONOTONIC_TIMESTAMP) | tonumber;
			map(select(ts < $b and ((.UNIT == "modbroker.service" and .MESSAGE_ID == "39f53479d3a045ac8e11786248231fbf")
				or (._TRANSPORT == "kernel" and (.MESSAGE | type) == "string"
					and (.MESSAGE | test("^(systemd\\[1\\]: )?Started modbroker.service"))))))
			| map(ts) | min // 0' "$r/journal-pid1.json")
	fi
	# "PID:US ..." of every daemon's ready line, at the time it was sent.
	logged=$(jq -rj 'select(.MESSAGE == "modbrokerd ready") | "\(._PID):\((.__MONOTONIC_TIMESTAMP | tonumber)
		- (.__REALTIME_TIMESTAMP | tonumber) + ((._SOURCE_REALTIME_TIMESTAMP // .__REALTIME_TIMESTAMP) | tonumber)) "' \
		"$r/journal-modbroker.json" 2>/dev/null || true)
	awk -v b="$b" -v phase="$phase" -v ready="${ready:-0}" -v logged="$logged" '
		{
			for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = $i * 1e6; break }
			if ((phase == "initramfs") != (t < b)) next
			if (!match($0, /\( *[0-9]+\)/)) next
			tg = substr($0, RSTART + 1, RLENGTH - 2) + 0
			if (!(tg in first)) first[tg] = t
			if (!pid && / sched_process_exec: filename=[^ ]*\/modbrokerd /) { pid = tg; m["exec"] = t; next }
			if (!pid) {
				if (!sb[tg] && $0 ~ /path="(\/proc\/self\/ns\/|\/run\/systemd\/(unit-root|mount-rootfs)")/) sb[tg] = t
				if ($0 ~ /path="(\/run\/systemd\/(unit-root|mount-rootfs)|[^"]*namespace-)/) mt[tg] = t
				next
			}
			if (tg != pid) next
			if (!m["config"] && $0 ~ /path="\/etc\/modbroker\//) m["config"] = t
			if (!m["kmod"] && $0 ~ /^ *modbroker-kmod-/) m["kmod"] = t
			if ($0 ~ /path="[^"]*\/modules\.[a-z.]*\.bin"/ && !seen[$NF]++ && !m["ko"]) m["indexes"] = t
			if ($0 ~ /path="[^"]*\.ko/) m["ko"] = t
		}
		END {
			if (!pid) exit
			m["spawn"] = first[pid]; m["sandbox"] = sb[pid]; m["mounted"] = mt[pid]; m["ready"] = ready
			split(logged, l, " ")
			for (i in l) if (split(l[i], pl, ":") == 2 && pl[1] == pid) m["logged"] = pl[2]
			if (!m["ready"]) m["ready"] = m["logged"] ? m["logged"] : m["indexes"]
			n = split("spawn sandbox mounted exec config kmod indexes logged ready", k, " ")
			for (i = n - 1; i >= 1; i--) if (!m[k[i]]) m[k[i]] = m[k[i + 1]]
			for (i = 1; i <= n; i++) printf "%.0f%s", m[k[i]], i < n ? " " : "\n"
		}' "$r/trace-modbroker"
}

echo "| case | phase | spawn→sandbox | sandbox (mounts) | mounted→exec | exec→config | config→kmod | kmod→indexes | indexes→ready logged | logged→READY (PID 1) | spawn→READY |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
rows=$(for dir in "${dirs[@]}"; do
	for phase in initramfs root; do
		read -r -a t <<<"$(marks "$dir" "$phase")"
		[ ${#t[@]} = 9 ] || continue
		echo "$(basename "$(dirname "$dir")")/$(basename "$dir") $phase $(awk -v s="${t[*]}" 'BEGIN {
			n = split(s, a, " "); for (i = 2; i <= n; i++) printf "%.0f ", (a[i] - a[i - 1]) / 1000; printf "%.0f", (a[n] - a[1]) / 1000 }')"
	done
done)
echo "$rows" | awk '{ printf "| %s | %s |", $1, $2; for (i = 3; i <= NF; i++) printf " %s |", $i; print "" }'
# Medians per image (the directory above the case) and phase.
echo "$rows" | awk '{ split($1, p, "/"); key = p[1] " " $2; n[key]++; for (i = 3; i <= NF; i++) v[key, i, n[key]] = $i; nf = NF }
	END {
		for (key in n) {
			split(key, kp, " "); printf "| median of %d, %s | %s |", n[key], kp[1], kp[2]
			for (i = 3; i <= nf; i++) {
				c = n[key]; delete a; for (j = 1; j <= c; j++) a[j] = v[key, i, j]
				for (x = 1; x <= c; x++) for (y = x + 1; y <= c; y++) if (a[y] < a[x]) { s = a[x]; a[x] = a[y]; a[y] = s }
				printf " %s |", c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
			}
			print ""
		}
	}' | sort
