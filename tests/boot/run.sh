#!/bin/bash
# run.sh - real-boot tests: Debian images with systemd as PID 1, the project's .deb installed with
# dpkg as a user would, the initramfs built by the distro's own tool (see lib.sh).
#
#   tests/boot/run.sh [CASE...]      default: all cases below; ends "boot: N passed, N failed"
#
# Cases (IMAGE is bookworm = Debian 12 with initramfs-tools, trixie = Debian 13 with dracut in
# host-only mode):
#   IMAGE-stock    no modbroker: the reference boot
#   IMAGE-broker   dpkg -i modbroker; the initramfs rebuilt by the dpkg trigger
#   bookworm-removed  dpkg -i, then dpkg -r: the trigger's new initramfs, stock behaviour
#   bookworm-typo  dpkg -i, then a typo in /etc/modbroker/modbroker.toml and update-initramfs -u
#   bookworm-nohook  dpkg -i, then an initramfs built while the hook is missing (deleted)
#   bookworm-brokenhook  dpkg -i, then an initramfs built by a hook that copies the client only
#   bookworm-upgrade  dpkg -i of the previous release's package (MB_BOOT_PREVIOUS_REV, built from
#                  git history); the boot upgrades to this tree's package while the daemon serves
#   trixie-generic  (not in the default list) dpkg -i, then a generic (hostonly=no) dracut image
# A broker case is judged against its image's stock boot (booted first if it has no results).
# Env: MB_BOOT_SMP (4), MB_BOOT_DEB (build/modbroker_*.deb, built by `make deb`),
#      MB_BOOT_PREVIOUS_REV (b501c6a: the last dpkg-deb-built 0.1.0, rule in /etc/udev), lib.sh's.
set -euo pipefail
# shellcheck source=tests/boot/lib.sh
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-system-x86
need mkfs.ext4 e2fsprogs
need debugfs e2fsprogs
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || die "needs root (debootstrap, chroot, mounts), or sudo"
	exec sudo -E "$0" "$@"
fi
SMP=${MB_BOOT_SMP:-4}
# shellcheck disable=SC2012 # the newest of build/modbroker_*.deb, names without spaces
DEB=${MB_BOOT_DEB:-$(ls "$REPO_ROOT"/build/modbroker_*.deb 2>/dev/null | tail -n1)}
[ -f "$DEB" ] || die "no .deb: run 'make deb' first"
ANALYZE="$REPO_ROOT/tests/vm/coldplug-analyze.awk"

# previous_deb: the package of MB_BOOT_PREVIOUS_REV, built once by that tree's own `make deb`
# (its own target directory, so this tree's build is untouched); prints its path.
previous_deb() {
	local rev dir debs
	rev=$(git -C "$REPO_ROOT" rev-parse --short "${MB_BOOT_PREVIOUS_REV:-b501c6a}^{commit}") ||
		die "MB_BOOT_PREVIOUS_REV=${MB_BOOT_PREVIOUS_REV:-b501c6a} is not a commit of this repository (a shallow clone?)"
	dir=$MB_BOOT_WORK/previous-$rev
	debs=("$dir"/src/build/modbroker_*.deb)
	if [ ! -f "${debs[0]}" ]; then
		rm -rf "$dir" && mkdir -p "$dir/src"
		git -C "$REPO_ROOT" archive "$rev" | tar -x -C "$dir/src"
		# Seeded with a copy of this tree's release builds, and built with this tree's release
		# profile (line tables), so that the dependencies are fresh and only modbroker itself
		# compiles (minutes less in CI). A copy, not a shared directory: cargo does not copy a
		# fresh binary to target/release again, so the old tree's would stay in ours.
		mkdir -p "$dir/src/target"
		# (client: the client profile's build scripts and proc macros, built for the host.)
		for sub in release client "$(rustc -vV | sed -n 's/^host: //p')"; do
			[ ! -d "$REPO_ROOT/target/$sub" ] || cp -a "$REPO_ROOT/target/$sub" "$dir/src/target/"
		done
		(cd "$dir/src" && export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only &&
			make --no-print-directory build && tools/make-deb.sh --no-check) >&2
		debs=("$dir"/src/build/modbroker_*.deb)
	fi
	echo "${debs[0]}"
}

image_of() { case $1 in bookworm-*) echo "bookworm initramfs-tools" ;; trixie-*) echo "trixie dracut" ;; *) die "unknown case $1" ;; esac; }

# prepare CASE ROOT GEN: change the copy of the base tree as the case says.
prepare() {
	local case=$1 root=$2 gen=$3
	install -D -m 0755 "$BOOT_DIR/guest/rule-state.sh" "$root/etc/mbtest/rule-state.sh"
	case $case in
	*-stock) rebuild_initramfs "$root" "$gen" ;;
	*-upgrade) install -m 0644 "$(previous_deb)" "$root/root/modbroker-previous.deb"
		in_chroot "$root" dpkg -i /root/modbroker-previous.deb
		# extra-broker.sh installs this tree's package while the daemon serves.
		install -m 0644 "$DEB" "$root/root/modbroker.deb"
		install -D -m 0755 "$BOOT_DIR/guest/extra-broker.sh" "$root/etc/mbtest/extra.sh"
		install -D -m 0644 "$BOOT_DIR/guest/mbtest-install.conf" "$root/etc/modprobe.d/mbtest-install.conf" ;;
	*) install -m 0644 "$DEB" "$root/root/modbroker.deb"
		# dpkg runs the initramfs generator through the trigger (no explicit rebuild here).
		in_chroot "$root" dpkg -i /root/modbroker.deb ;;&
	*-broker)
		install -D -m 0755 "$BOOT_DIR/guest/extra-broker.sh" "$root/etc/mbtest/extra.sh"
		install -D -m 0644 "$BOOT_DIR/guest/mbtest-install.conf" "$root/etc/modprobe.d/mbtest-install.conf" ;;
	*-removed) in_chroot "$root" dpkg -r modbroker ;;
	*-typo) echo "failure_window = 10" >>"$root/etc/modbroker/modbroker.toml"
		rebuild_initramfs "$root" "$gen" ;;
	*-nohook) rm "$root/usr/share/initramfs-tools/hooks/modbroker"
		rebuild_initramfs "$root" "$gen" ;;
	*-generic) sed -i 's/^hostonly=.*/hostonly="no"/' "$root/etc/dracut.conf.d/90-mbtest.conf"
		rebuild_initramfs "$root" "$gen"
		install -D -m 0755 "$BOOT_DIR/guest/extra-broker.sh" "$root/etc/mbtest/extra.sh" ;;
	*-brokenhook) sed -i 's|copy_exec /usr/bin/modbrokerd|true|' "$root/usr/share/initramfs-tools/hooks/modbroker"
		rebuild_initramfs "$root" "$gen" ;;
	esac
	ls -l "$root/etc/udev/rules.d/" "$root/etc/systemd/system/sockets.target.wants/" \
		"$root/etc/systemd/system/sysinit.target.wants/" >"$(dirname "$root")/etc.list" 2>&1
	in_chroot "$root" /etc/mbtest/rule-state.sh >"$(dirname "$root")/rule.state"
	# shellcheck disable=SC2016 # expanded inside the chroot
	in_chroot "$root" sh -c 'for i in /boot/initr*; do echo "== $i"; lsinitrd "$i" 2>/dev/null || lsinitramfs "$i"; done' \
		>"$(dirname "$root")/initramfs.list" 2>&1
}

# boot_case CASE: prepares, boots, and summarises CASE into build/boot/IMAGE/CASE/summary.
boot_case() {
	local case=$1 dist gen root dir
	read -r dist gen <<<"$(image_of "$case")"
	log "$case: preparing ($dist, $gen)"
	root=$(new_tree "$dist" "$gen" "$case")
	dir=$(dirname "$root")
	prepare "$case" "$root" "$gen" >"$dir/prepare.log" 2>&1 || { tail -n 20 "$dir/prepare.log" >&2; return 1; }
	make_disk "$root" "$dir/disk.img"
	log "$case: booting with $SMP vCPUs"
	boot_image "$dir" "$SMP" || return 1
	summarise "$dir"
	remove_tree "$root"
	rm -f "$dir/disk.img"
}

# summarise DIR: per phase (initramfs = before PID 1's last exec, root = after), the trace through
# coldplug-analyze.awk, as "PHASE_KEY=VALUE" lines in DIR/summary.
summarise() {
	local dir=$1 r=$1/results boundary
	boundary=$(awk '/sched_process_exec: .* pid=1 / { t = $0; sub(/: sched_process_exec.*/, "", t); sub(/.* /, "", t) } END { print t }' "$r/trace")
	{
		for phase in initramfs root; do
			awk -v b="$boundary" -v phase="$phase" '{
				for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = $i + 0; break }
				if ((phase == "initramfs") == (t < b + 0)) print "MB-TRACE: " $0
			}' "$r/trace" | awk -f "$ANALYZE" | sed "s/^/${phase}_/"
		done
		echo "boundary=$boundary"
		# udev's execs of the client, per phase (skip markers spare the rest).
		awk -v b="$boundary" '/sched_process_exec: filename=\/usr\/bin\/modbroker / {
				for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = $i + 0; break }
				if (t < b + 0) n0++; else n1++
			} END { printf "initramfs_client_runs=%d\nroot_client_runs=%d\n", n0, n1 }' "$r/trace-modbroker"
		# The emulator's own stalls (a vCPU soft-locked under TCG stalls RCU, and every module
		# load's grace period with it): counted, so a slow boot can be told from a slow broker.
		echo "guest_stalls=$(grep -c -e 'watchdog: BUG: soft lockup' -e 'rcu: INFO: rcu_preempt detected stalls' "$dir/console.log")"
		awk '{ v[$1] = $0 } END { }
			/^InitRDTimestampMonotonic=/ { split($0, a, "="); initrd = a[2] }
			/^UserspaceTimestampMonotonic=/ { split($0, a, "="); us = a[2] }
			/^ActiveEnterTimestampMonotonic=/ { split($0, a, "="); mu = a[2] }
			END {
				printf "userspace_s=%.1f\n", (mu - us) / 1e6; if (initrd > 0) printf "initrd_s=%.1f\n", (us - initrd) / 1e6
				printf "userspace_start_s=%.1f\nmulti_user_s=%.1f\n", us / 1e6, mu / 1e6
			}' "$r/analyze"
	} >"$dir/summary"
}

get() { sed -n "s/^$2=//p" "$1/summary" | head -n1; }

# What rule-state.sh must say while the package is installed (its rule in /usr/lib, udev's
# diverted under both names, nothing in /etc/udev) and after dpkg -r (udev's own rule back).
RULE_STATE_INSTALLED="diversions=2 rule=broker distrib=yes etc_rule=no"
RULE_STATE_REMOVED="diversions=0 rule=udev distrib=no etc_rule=no"
# rule_state FILE: rule-state.sh's lines in FILE, on one line.
rule_state() { grep -E '^(diversions|rule|distrib|etc_rule)=' "$1" | tr '\n' ' ' | sed 's/ $//'; }

PASSED=0
FAILED=0
check() { # check NAME CMD...
	local name=$1
	shift
	if "$@"; then echo "boot: PASS $name"; PASSED=$((PASSED + 1)); else echo "boot: FAIL $name"; FAILED=$((FAILED + 1)); fi
}

# judge CASE: the checks of CASE against its image's stock boot.
judge() {
	local case=$1 dist gen dir stock
	read -r dist gen <<<"$(image_of "$case")"
	dir="$MB_BOOT_WORK/$dist-$gen/$case"
	stock="$MB_BOOT_WORK/$dist-$gen/$dist-stock"
	local r=$dir/results s=$stock/results
	check "$case: reached multi-user.target with / on /dev/vda" grep -q '^/dev/vda ' "$r/root"
	check "$case: udev settled before the results were taken" grep -qx 0 "$r/settle.rc"
	check "$case: trace complete (no ring-buffer overrun)" sh -c "! grep -v ': 0$' '$r/overrun' | grep -q ."
	check "$case: no failed units beyond the stock boot's" sh -c "! comm -23 '$r/failed' '$s/failed' | grep ."
	check "$case: same /proc/modules as the stock boot" diff "$s/modules" "$r/modules"
	check "$case: udev journal has no worker timeouts or kills" sh -c "! grep -Ei 'timeout|timed out|killed|kill' '$r/journal-udev'"
	check "$case: no ordering cycle in either phase (the journal)" sh -c "! grep . '$r/cycles'"
	case $case in
	*-stock) return ;;
	*-removed | *-nohook | *-brokenhook) judge_builtin "$case" "$dir" ;;
	*) judge_broker "$case" "$dir" "$gen" ;;
	esac
}

# judge_builtin: udev's builtin loads modules in the initramfs (no modbroker in it) and in the root.
judge_builtin() {
	local case=$1 dir=$2
	if [ "$case" = bookworm-brokenhook ]; then
		check "$case: initramfs holds the client but no daemon" sh -c \
			"grep -q 'usr/bin/modbroker\$' '$dir/initramfs.list' && ! grep -q 'usr/bin/modbrokerd\$' '$dir/initramfs.list'"
	else
		check "$case: initramfs holds no modbroker client" sh -c "! grep -q 'usr/bin/modbroker\$' '$dir/initramfs.list'"
	fi
	check "$case: udev's builtin loaded modules in the initramfs" sh -c "grep '^initramfs_by_comm=' '$dir/summary' | grep -q udev"
	check "$case: no load calls from modbrokerd in the initramfs" sh -c "! grep '^initramfs_by_comm=' '$dir/summary' | grep -q modbrokerd"
	# Without a working hook only the initramfs is stock; the real root still has the package.
	[ "$case" != bookworm-removed ] &&
		check "$case: the real root's loads all by the daemon" [ "$(get "$dir" root_modbrokerd_processes)" = 1 ]
	[ "$case" = bookworm-removed ] &&
		check "$case: no load calls from modbrokerd in the real root" sh -c "! grep '^root_by_comm=' '$dir/summary' | grep -q modbrokerd"
	[ "$case" = bookworm-removed ] &&
		check "$case: dpkg -r gave udev its own 80-drivers.rules back, no diversion left ($(rule_state "$dir/rule.state"))" \
			[ "$(rule_state "$dir/rule.state")" = "$RULE_STATE_REMOVED" ]
	return 0
}

judge_broker() {
	local case=$1 dir=$2 gen=$3 r=$2/results phase calls distinct stockdir
	stockdir=$(dirname "$dir")/${case%%-*}-stock
	check "$case: the postinst enabled modbroker.socket and modbroker.service without a running systemd" sh -c \
		"grep -q 'modbroker.socket ->' '$dir/etc.list' && grep -q 'modbroker.service ->' '$dir/etc.list'"
	# The upgrade case boots the previous release (its rule in /etc); it is checked after the upgrade.
	[ "$case" = bookworm-upgrade ] ||
		check "$case: the package's rule in /usr/lib/udev/rules.d, udev's diverted aside, nothing in /etc/udev ($(rule_state "$dir/rule.state"))" \
			[ "$(rule_state "$dir/rule.state")" = "$RULE_STATE_INSTALLED" ]
	check "$case: initramfs holds the client, the daemon and 80-drivers.rules" sh -c \
		"grep -q 'usr/bin/modbroker\$' '$dir/initramfs.list' && grep -q 'usr/bin/modbrokerd\$' '$dir/initramfs.list' && grep -q '80-drivers.rules\$' '$dir/initramfs.list'"
	for phase in initramfs root; do
		# The broker's own path: one call per module. Calls by other processes are the kernel's
		# request_module() through kmod's modprobe (kernel.modprobe is not ours) and systemd's
		# modprobe@ units; they race each other as in a stock boot, so the phase as a whole is held
		# to no EBUSY and to no more calls than the stock boot's.
		# A failed module is tried again once its failure window (30 s) has passed without a
		# request: under TCG at 64 vCPUs a guest stall (soft lockup) can be that quiet gap.
		calls=$(get "$dir" "${phase}_modbrokerd_calls")
		distinct=$(get "$dir" "${phase}_modbrokerd_distinct")
		retries=$(get "$dir" "${phase}_modbrokerd_retries_after_window")
		check "$case: $phase: modbrokerd's load calls ($calls) at most the distinct modules it attempted ($distinct) plus retries after a failure window ($retries)" \
			[ "$calls" -le "$((distinct + retries))" ]
		# (A generic initramfs holds every driver: its phase is not comparable to host-only stock.)
		[ "$case-$phase" = trixie-generic-initramfs ] ||
			check "$case: $phase: load calls ($(get "$dir" "${phase}_calls")) below the stock boot's ($(get "$stockdir" "${phase}_calls"))" \
				[ "$(get "$dir" "${phase}_calls")" -lt "$(get "$stockdir" "${phase}_calls")" ]
		check "$case: $phase: no EBUSY" [ "$(get "$dir" "${phase}_ebusy")" = 0 ]
		# One process: the daemon made every load of the phase, none fell back to loading directly.
		check "$case: $phase: one modbrokerd process made the loads (daemon, no fallback)" \
			[ "$(get "$dir" "${phase}_modbrokerd_processes")" = 1 ]
		# 80-debian-compat.rules has its own `kmod load sg` for SCSI devices, outside 80-drivers.rules.
		local own
		own=$(get "$dir" "${phase}_udev_modules")
		check "$case: $phase: udev itself loaded nothing 80-drivers.rules asks for (it loaded: ${own:-nothing})" \
			sh -c "[ -z '$own' ] || [ '$own' = sg ]"
	done
	local sock_up udevd_up
	sock_up=$(sed -n '/^Id=modbroker.socket/,/^$/s/^ActiveEnterTimestampMonotonic=//p' "$r/units")
	udevd_up=$(sed -n '/^Id=systemd-udevd.service/,/^$/s/^InactiveExitTimestampMonotonic=//p' "$r/units")
	check "$case: modbroker.socket listening (${sock_up} us) before systemd-udevd started (${udevd_up} us)" \
		awk -v a="$sock_up" -v b="$udevd_up" 'BEGIN { exit !(a > 0 && a < b) }'
	# modbroker.service's properties, from the guest's `systemctl show` of several units.
	local svc=$dir/modbroker.service.props order
	sed -n '/^Id=modbroker.service/,/^$/p' "$r/units" >"$svc"
	check "$case: modbroker.service wanted by sysinit.target alone, and socket-activatable" sh -c \
		"grep -qx 'WantedBy=sysinit.target' '$svc' && grep -qx 'RequiredBy=' '$svc' && grep -q '^TriggeredBy=modbroker.socket' '$svc'"
	judge_ready "$case" "$dir" root
	if [ "$gen" = dracut ]; then
		check "$case: the initrd's sysinit.target wants modbroker.service" \
			grep -q 'etc/systemd/system/sysinit.target.wants/modbroker.service' "$dir/initramfs.list"
		judge_ready "$case" "$dir" initramfs
	fi
	order=$(grep -E '^(After|RequiresMountsFor)=' "$svc" | tr '\n' ' ')
	# RuntimeDirectory= (the boot's record) adds RequiresMountsFor=/run/modbroker and
	# After=-.mount: /run is the API file system and / is mounted before PID 1 starts, so both
	# are met at once. Any other mount would order the daemon after a mount that may need it.
	check "$case: modbroker.service not ordered after local-fs.target, no RequiresMountsFor outside /run ($order)" \
		sh -c "! grep -Eq '^After=.*(local-fs|tmpfiles-setup|basic.target|sysinit.target)' '$svc' &&
			awk -F= '/^RequiresMountsFor=/ { n = split(\$2, p, \" \"); for (i = 1; i <= n; i++) if (p[i] !~ /^\\/run\\//) exit 1 }' '$svc'"
	# The real root's first daemon (the upgrade check restarts it later): its "ready" line.
	local started last_end
	started=$(awk -v b="$(get "$dir" boundary)" '/modbrokerd ready/ { t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t); if (t + 0 > b + 0) { print t; exit } }' "$r/journal-modbroker")
	last_end=$(get "$dir" root_last_end)
	check "$case: the real root's modbrokerd was ready (${started:-never} s) before its last load ended (${last_end} s)" \
		awk -v a="$started" -v b="$last_end" 'BEGIN { exit !(a > 0 && a < b) }'
	# Not the lines the broker case's sandbox control prints: its install command runs inside
	# the daemon (no runner), so its output is the daemon's stderr stream (extra-broker.sh).
	check "$case: modbrokerd's journal lines carry priorities (native journal protocol)" sh -c \
		"grep -v 'mbtest-install-stdout\\|/bin/sh: ' '$r/journal-modbroker.json' >'$r/journal-modbroker.own' && grep -q . '$r/journal-modbroker.own' && ! grep -v '\"PRIORITY\"' '$r/journal-modbroker.own' | grep -q . && ! grep -v '\"_TRANSPORT\":\"journal\"' '$r/journal-modbroker.own' | grep -q ."
	case $case in
	*-typo)
		check "$case: the config error is logged at priority err" grep -q '"PRIORITY":"3"' "$r/journal-modbroker.json"
		check "$case: systemctl status shows the config error" grep -q '^StatusText=configuration error' "$r/units"
		;;
	*-broker)
		check "$case: coldplug left skip markers that resolve ($(grep '^skip: coldplug left [0-9]' "$r/extra"))" \
			grep -q '^skip: coldplug left resolving markers' "$r/extra"
		check "$case: skip: pcspkr loaded, its marker resolves, \`udevadm test\` runs no client" \
			grep -q '^skip: pcspkr loaded, its marker resolves' "$r/extra"
		check "$case: skip: rmmod pcspkr, its marker dangles, udev runs the client again" \
			grep -q '^skip: pcspkr unloaded, its marker dangles' "$r/extra"
		check "$case: skip: modprobe pcspkr, and its marker resolves again" \
			grep -q '^skip: pcspkr loaded again, its marker resolves again' "$r/extra"
		check "$case: skip: a modprobe.d change (the daemon's inotify watch) makes the markers stop resolving" \
			grep -q '^skip: a modprobe.d change made the markers stop resolving' "$r/extra"
		;;
	esac
	case $case in
	*-broker | *-upgrade)
		check "$case: requests during an upgrade (dpkg -i while serving) all answered" grep -q '^upgrade: all answered' "$r/extra"
		check "$case: the socket stayed open through the upgrade (the daemon alone restarted)" \
			grep -q '^upgrade: the socket stayed open' "$r/extra"
		check "$case: after dpkg -i: the package's rule in /usr/lib/udev/rules.d, udev's diverted aside, nothing in /etc/udev ($(rule_state "$r/extra"))" \
			[ "$(rule_state "$r/extra")" = "$RULE_STATE_INSTALLED" ]
		check "$case: an install line through the daemon wrote /run, /sys and /proc/sys (modbroker-install@.service)" \
			grep -q '^install: ran outside the sandbox' "$r/extra"
		check "$case: its stdout went to the runner's journal" grep -q '^install: stdout in the journal' "$r/extra"
		check "$case: control: the same line inside the daemon's sandbox fails" \
			grep -q '^install control: fails inside the sandbox' "$r/extra"
		;;
	esac
	# The initramfs's daemon is gone; its last log line holds its totals (requests it answered
	# and how many of them were merged into another's load).
	local stopped
	if [ "$gen" = initramfs-tools ]; then
		stopped=$(grep 'modbrokerd stopped' "$r/initramfs.log" | tail -n1 | sed 's/.*requests=\([0-9]*\) merged=\([0-9]*\).*/\1 \2/')
	else
		# tracing-journald's field names: REQUESTS, MERGED (in no fixed order).
		local entry
		# grep -m1, not grep | head: head's early exit can kill grep with SIGPIPE, and under
		# pipefail and set -e that ended the whole run silently (a 16-vCPU Debian 13 pair).
		entry=$(grep -m1 '"MESSAGE":"modbrokerd stopped"' "$r/journal-modbroker.json" || true)
		stopped="$(echo "$entry" | sed -n 's/.*"REQUESTS":"\([0-9]*\)".*/\1/p') $(echo "$entry" | sed -n 's/.*"MERGED":"\([0-9]*\)".*/\1/p')"
	fi
	check "$case: the initramfs's daemon answered requests and merged some, then stopped (requests merged: ${stopped:-none})" \
		awk -v s="$stopped" 'BEGIN { split(s, a, " "); exit !(a[1] > 0 && a[2] > 0) }'
	case $case in *-broker | *-generic | *-upgrade) judge_record "$case" "$dir" "$gen" ;; esac
	return 0
}

# service_times DIR PHASE: "START READY TRIGGER CLIENT ORDERED" of the phase's modbroker.service
# (monotonic us): its start, its READY, the start of systemd-udev-trigger's job, the phase's first
# exec of the client (the trace), and 1 if READY came before the trigger's start. In the root
# from systemctl show (taken before the extra checks restart the daemon). In a dracut initrd,
# START is the daemon process's first traced event, READY and TRIGGER PID 1's lines "Started
# modbroker.service" (at READY for Type=notify) and "Starting systemd-udev-trigger.service":
# in the journal (MESSAGE_ID 39f5..., 7d49...) or, logged before journald ran, in the kernel
# log. PID 1 logs to the kernel log until journald runs and to the journal after, so a
# kernel-log line comes before every journal line, whatever their timestamps' clocks say.
service_times() {
	local dir=$1 phase=$2 r=$1/results b first
	b=$(awk -v b="$(get "$dir" boundary)" 'BEGIN { printf "%.0f", b * 1e6 }')
	# "DAEMON_FIRST_EVENT CLIENT_EXEC" of the phase.
	first=$(awk -v b="$b" -v phase="$phase" '{
		for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) { t = $i * 1e6; break }
		if ((phase == "initramfs") != (t < b) || !match($0, /\( *[0-9]+\)/)) next
		tg = substr($0, RSTART + 1, RLENGTH - 2) + 0
		if (!(tg in seen)) seen[tg] = t
		if (!daemon && / sched_process_exec: filename=[^ ]*\/modbrokerd /) daemon = tg
		if (!client && / sched_process_exec: filename=[^ ]*\/modbroker /) client = t
	} END { printf "%.0f %.0f", daemon ? seen[daemon] : 0, client }' "$r/trace-modbroker")
	if [ "$phase" = root ]; then
		awk -F= -v client="${first#* }" '$1 == "Id" { id = $2 }
			id == "modbroker.service" && $1 == "InactiveExitTimestampMonotonic" { s = $2 }
			id == "modbroker.service" && $1 == "ActiveEnterTimestampMonotonic" { r = $2 }
			id == "systemd-udev-trigger.service" && $1 == "InactiveExitTimestampMonotonic" { t = $2 }
			END { printf "%s %s %s %s %d\n", s + 0, r + 0, t + 0, client, (r > 0 && r <= t) }' "$r/units"
		return
	fi
	jq -rjs --argjson b "$b" --arg start "${first% *}" --arg client "${first#* }" '
		def ts: (._SOURCE_MONOTONIC_TIMESTAMP // .__MONOTONIC_TIMESTAMP) | tonumber;
		def key: [(if ._TRANSPORT == "kernel" then 0 else 1 end), ts];
		def line(u; id; text): map(select(ts < $b and ((.UNIT == u and .MESSAGE_ID == id)
			or (._TRANSPORT == "kernel" and (.MESSAGE | type) == "string"
				and (.MESSAGE | test("^(systemd\\[1\\]: )?" + text)))))) | min_by(key);
		line("modbroker.service"; "39f53479d3a045ac8e11786248231fbf"; "Started modbroker.service") as $r
		| line("systemd-udev-trigger.service"; "7d4958e842da4a758f6c1cdc7b36dcc5";
			"Starting systemd-udev-trigger.service") as $t
		| [$start, ($r | if . then ts else 0 end), ($t | if . then ts else 0 end), $client,
			(if $r and $t and ($r | key) < ($t | key) then 1 else 0 end)]
		| map(tostring) | join(" ")' "$r/journal-pid1.json"
	echo
}

# judge_ready CASE DIR PHASE: modbroker.service was started by sysinit.target's transaction, not
# by a client's connection (its start came before the phase's first client ran), and reported
# READY before udev's coldplug (systemd-udev-trigger.service) began.
judge_ready() {
	local case=$1 dir=$2 phase=$3 start ready trigger client ordered
	read -r start ready trigger client ordered <<<"$(service_times "$dir" "$phase")"
	echo "$phase start=$start ready=$ready trigger=$trigger client=$client" >>"$dir/ready.times"
	check "$case: $phase: modbroker.service started (${start} us) before the first client ran (${client} us)" \
		awk -v a="$start" -v b="$client" 'BEGIN { exit !(a > 0 && b > 0 && a < b) }'
	check "$case: $phase: modbroker.service ready (${ready} us, $(((ready - start) / 1000)) ms after its start) before systemd-udev-trigger started (${trigger} us)" \
		[ "$ordered" = 1 ]
}

# json_true FILE EXPR: jq's EXPR over FILE's JSON values (slurped) is true.
json_true() { jq -se "$2" "$1" >/dev/null; }

# judge_record CASE DIR GEN: the boot's record (modbroker blame, plot) against the kernel's trace
# and the daemons' own totals. Each daemon instance left one file in results/record (the
# guest stopped the last one, so every file is final).
judge_record() {
	local case=$1 dir=$2 gen=$3 r=$2/results phase files m missing calls recorded
	need jq jq
	need rsvg-convert librsvg2-bin
	check "$case: modbroker blame ran (exit 0)" grep -qx 0 "$r/blame.rc"
	check "$case: modbroker plot ran (exit 0)" grep -qx 0 "$r/plot.rc"
	check "$case: the plot renders (rsvg-convert)" rsvg-convert -o "$r/plot.png" "$r/plot.svg"
	files=$(ls "$r"/record/*.json 2>/dev/null)
	local rows modules
	rows=$( (grep -o '<g class="row"' "$r/plot.svg" || true) | wc -l)
	# shellcheck disable=SC2086
	modules=$(jq -s '[.[].modules[].module] | unique | length' $files)
	check "$case: the plot has one row per module in the record ($rows rows, $modules modules)" [ "$rows" = "$modules" ]
	for phase in initramfs root; do
		# shellcheck disable=SC2086
		jq -s --arg p "$phase" 'map(select(.phase == $p))' $files >"$r/record-$phase.json" 2>/dev/null
		check "$case: $phase: the record has this phase's daemon" \
			[ "$(jq length "$r/record-$phase.json")" -ge 1 ]
		missing=""
		for m in $(get "$dir" "${phase}_modbrokerd_modules" | tr , ' '); do
			grep -qw -- "$m" "$r/blame.txt" || missing="$missing $m"
		done
		check "$case: $phase: blame lists every module modbrokerd loaded (missing:${missing:- none})" [ -z "$missing" ]
		# Load calls that handed a file to the kernel, as recorded, against the tracepoints.
		calls=$(get "$dir" "${phase}_modbrokerd_calls")
		recorded=$(jq '[.[].modules[].loads[] | select(.method == "finit" or .method == "finit-compressed" or .method == "init-module")] | length' "$r/record-$phase.json")
		check "$case: $phase: recorded load calls ($recorded) = modbrokerd's traced calls ($calls)" [ "$recorded" = "$calls" ]
	done
	# Each instance's totals against the line it logged as it stopped (same instant): for the
	# initramfs-tools daemon its log file, for the others the journal (matched by pid and time).
	local bad=""
	# shellcheck disable=SC2086 # $files: one word per record file
	while read -r pid phase stopped requests merged load_calls; do
		local logged
		if [ "$gen-$phase" = initramfs-tools-initramfs ]; then
			logged=$(grep 'modbrokerd stopped' "$r/initramfs.log" | tail -n1 |
				sed 's/.*requests=\([0-9]*\) merged=\([0-9]*\) load_calls=\([0-9]*\).*/\1 \2 \3/')
		else
			logged=$(jq -rs --arg pid "$pid" --argjson t "$stopped" '
				map(select(.MESSAGE == "modbrokerd stopped" and ._PID == $pid))
				| min_by((.__MONOTONIC_TIMESTAMP | tonumber) - $t | if . < 0 then -. else . end)
				| "\(.REQUESTS) \(.MERGED) \(.LOAD_CALLS)"' "$r/journal-modbroker.json" 2>/dev/null)
		fi
		[ "$logged" = "$requests $merged $load_calls" ] || bad="$bad $phase/$pid:[$requests $merged $load_calls]!=[$logged]"
	done < <(jq -r '"\(.pid) \(.phase) \(.stopped_us // 0) \(.totals.requests) \(.totals.merged) \(.totals.load_calls)"' $files)
	check "$case: every daemon's recorded totals equal the totals it logged on stopping (${bad:-all equal})" [ -z "$bad" ]
	check "$case: journalctl MODULE= finds a finished load with its fields" json_true "$r/journal-modbroker.json" \
		'map(select(.MODULE != null and .DURATION_USEC != null and .REQUESTS != null and .PHASE != null)) | length > 0'
}

CASES=${*:-bookworm-stock bookworm-broker bookworm-removed bookworm-typo bookworm-nohook bookworm-brokenhook bookworm-upgrade trixie-stock trixie-broker}
for case in $CASES; do
	read -r dist gen <<<"$(image_of "$case")"
	stock="$MB_BOOT_WORK/$dist-$gen/$dist-stock"
	if [ "$case" != "$dist-stock" ] && [ ! -f "$stock/summary" ]; then
		boot_case "$dist-stock" || { check "$dist-stock: boot" false; continue; }
		judge "$dist-stock"
	fi
	if boot_case "$case"; then judge "$case"; else check "$case: boot" false; fi
done
echo "boot: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
