#!/bin/bash
# bench.sh - run modbroker's benchmarks and print their tables (markdown).
#
# Usage: tests/vm/bench.sh [host] [burst] [startup] [startup-host]   (default: all)
#   host     cargo bench --bench request_path and --bench memory (fake kernel,
#            on this machine)
#   burst    VM: N concurrent loads of mb_fail, direct finit_module vs
#            modbrokerd, N in $MB_BENCH_NS (scenarios/bench-burst.sh)
#   startup  VM: whole-process cost of `modbroker load --udev` (this tree's
#            client and the old one, see below) vs kmod and busybox modprobe
#            of a loaded module (scenarios/bench-startup.sh)
#   startup-host  the same comparison on this machine's real CPU: a daemon on
#            a scratch socket over the 6.1 tree, `modbroker load --udev unix`
#            (new and old client) vs `modprobe -S KVER -q unix` (builtin in
#            6.1: all answer without a syscall), instructions per whole process
#            counted by `valgrind --tool=callgrind`, wall time by hyperfine
#            ($MB_BENCH_HOST_RUNS runs each, default 1000), two rounds in
#            opposite order
# The client measured is the one installed: static-pie, from `make build`.
# The old client, for side-by-side figures, is the client of commit
# $MB_BENCH_OLD_REV (default 317eb22, the last one before the fast udev path:
# dynamic, clap), built once into $MB_VM_WORK/bench/old-client-REV as that
# tree's `make build` builds it: static-pie with the `client` profile where the
# tree has one (58f8cee: the last client with serde_json on udev's path).
# Builds the release binaries (`make build`; mb-burst with --features bench-tools),
# boots the VMs through run.sh, extracts the "MB-BENCH:" lines, writes CSVs
# and the report to $MB_VM_WORK/bench/ (report.md holds every table plus the
# command, machine and date) and the burst chart to docs/bench-burst.svg.
# Reports numbers only: it fails when a run fails, never because of a time.
# Env: CARGO_TARGET_DIR, MB_BENCH_NS, MB_BENCH_REPS, MB_BENCH_HOST_RUNS,
# MB_BENCH_OLD_REV, MB_BENCH_STARTUP_SMP (vCPUs of the startup VM, default 2), MB_VM_SMP, MB_VM_TIMEOUT (default 1800 here), plus
# everything run.sh takes.
set -eu
. "$(dirname "$0")/common.sh"

parts=${*:-host burst startup startup-host}
target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
out=$MB_VM_WORK/bench
mkdir -p "$out"
report=$out/report.md
export MB_VM_TIMEOUT=${MB_VM_TIMEOUT:-1800}

need cargo cargo
need python3 python3
triple=$(rustc -vV | sed -n 's/^host: //p')
client=$target/$triple/client/modbroker

# old_client: the client of $MB_BENCH_OLD_REV, built once (its own target
# directory, so this tree's build is untouched); prints its path.
old_client() {
	rev=$(git -C "$REPO_ROOT" rev-parse --short "${MB_BENCH_OLD_REV:-317eb22}^{commit}") ||
		die "MB_BENCH_OLD_REV=${MB_BENCH_OLD_REV:-317eb22} is not a commit of this repository"
	dir=$out/old-client-$rev
	if [ ! -x "$dir/bin/modbroker" ]; then
		echo "== building the old client ($rev) in $dir" >&2
		rm -rf "$dir/src" && mkdir -p "$dir/src" "$dir/bin"
		git -C "$REPO_ROOT" archive "$rev" | tar -x -C "$dir/src"
		if grep -q '^\[profile\.client\]' "$dir/src/Cargo.toml"; then
			(cd "$dir/src" && CARGO_TARGET_DIR=$dir/target RUSTFLAGS="-C target-feature=+crt-static" \
				cargo build --profile client --locked --no-default-features --bin modbroker --target "$triple") >&2
			cp "$dir/target/$triple/client/modbroker" "$dir/bin/modbroker"
		else
			(cd "$dir/src" && CARGO_TARGET_DIR=$dir/target cargo build --release --locked --bin modbroker) >&2
			cp "$dir/target/release/modbroker" "$dir/bin/modbroker"
		fi
	fi
	echo "$dir/bin/modbroker"
}
{
	echo "# modbroker benchmarks"
	echo
	echo "- command: \`tests/vm/bench.sh $parts\`"
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "- commit: $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
	echo "- host: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), Linux $(uname -r); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- VM: qemu TCG, ${MB_VM_SMP:-4} vCPUs, ${MB_VM_MEM:-1024} MiB, guest kernel $KVER"
	echo
} >"$report"

case " $parts " in *" host "*)
	echo "== host benchmarks (cargo bench)" >&2
	(cd "$REPO_ROOT" && cargo bench --bench request_path) | tee "$out/request_path.md"
	(cd "$REPO_ROOT" && cargo bench --bench memory) | tee "$out/memory.md"
	{ sed 's/^# /## /' "$out/request_path.md"; echo; sed 's/^# /## /' "$out/memory.md"; echo; } >>"$report"
	;;
esac

vm_parts=
case " $parts " in *" burst "*) vm_parts="$vm_parts burst" ;; esac
case " $parts " in *" startup "*) vm_parts="$vm_parts startup" ;; esac
if [ -n "$vm_parts" ]; then
	echo "== building release binaries" >&2
	case " $vm_parts " in *" burst "*)
		(cd "$REPO_ROOT" && cargo build --release --features bench-tools --bin mb-burst) >&2 ;;
	esac
	(cd "$REPO_ROOT" && make --no-print-directory build) >&2
	export MODBROKERD=$target/release/modbrokerd MODBROKER=$client
fi

# run_vm SCENARIO: boot it (console to $MB_VM_WORK/SCENARIO.log), fail loudly.
run_vm() {
	echo "== VM: $1 (console log $MB_VM_WORK/$1.log)" >&2
	if ! "$REPO_ROOT/tests/vm/run.sh" "$1" >"$out/$1.run" 2>&1; then
		tail -n 40 "$out/$1.run" >&2
		die "VM scenario $1 failed (see $MB_VM_WORK/$1.log)"
	fi
	grep '^== ' "$out/$1.run" >&2 || true
}

# kv LINE KEY: the value of KEY=... in an MB-BENCH line.
kv() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

case " $vm_parts " in *" burst "*)
	MB_VM_EXTRA_BINS="$target/release/mb-burst=/usr/bin/mb-burst" run_vm bench-burst
	csv=$out/burst.csv
	echo "n,mode,secs,first_secs,median_secs,daemon_max_secs,init_attempts,finit_calls,outcomes" >"$csv"
	tr -d '\r' <"$MB_VM_WORK/bench-burst.log" | grep '^MB-BENCH: burst ' | while read -r line; do
		echo "$(kv "$line" n),$(kv "$line" mode),$(kv "$line" secs),$(kv "$line" first),$(kv "$line" median),$(kv "$line" daemon_max),$(kv "$line" attempts),$(kv "$line" finit),\"$(kv "$line" outcomes)\""
	done >>"$csv"
	{
		echo "## burst: N concurrent loads of mb_fail (init sleeps 300 ms, fails ENODEV)"
		echo
		echo "Time from release until every caller had its answer (first / median caller in brackets); init attempts = \"mb_fail: init attempt\" lines in dmesg; finit = traced finit_module syscalls; daemon = longest \`elapsed_us\` in the replies (request read to result ready, inside modbrokerd). Single load = direct, N=1."
		echo
		echo "| N | direct: time (first / median) | direct: init attempts | direct: finit | direct: callers told | broker: time (first / median) | broker: daemon | broker: init attempts | broker: finit | broker: callers told | broker / single load |"
		echo "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |"
		python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
by = {(r["mode"], int(r["n"])): r for r in rows}
single = float(by[("direct", 1)]["secs"]) if ("direct", 1) in by else None
for n in sorted({int(r["n"]) for r in rows}):
    d, b = by.get(("direct", n), {}), by.get(("broker", n), {})
    ratio = f'{float(b["secs"]) / single:.2f}x' if b and single else ""
    def cell(r, k, unit=""):
        return f'{r[k]}{unit}' if r else ""
    def time(r):
        return f'{r["secs"]} s ({r["first_secs"]} / {r["median_secs"]})' if r else ""
    print(f'| {n} | {time(d)} | {cell(d,"init_attempts")} | {cell(d,"finit_calls")} | {cell(d,"outcomes")} '
          f'| {time(b)} | {cell(b,"daemon_max_secs"," s")} | {cell(b,"init_attempts")} | {cell(b,"finit_calls")} | {cell(b,"outcomes")} | {ratio} |')
PY
		echo
		echo "Target: broker time within 1.1x of a single load at every N, one init attempt, every caller told the truth (ENODEV)."
		echo
	} | tee -a "$report"
	python3 "$REPO_ROOT/tools/charts.py" burst "$csv" "$REPO_ROOT/docs/bench-burst.svg" >&2
	;;
esac

case " $vm_parts " in *" startup "*)
	old=$(old_client)
	# 2 vCPUs unless MB_BENCH_STARTUP_SMP says otherwise: one per host core, so that neither the
	# client's nor the daemon's vCPU waits for a host core in the middle of a request.
	MB_VM_SMP=${MB_BENCH_STARTUP_SMP:-2} MB_VM_EXTRA_BINS="/usr/bin/kmod $old=/usr/bin/modbroker-old" \
		run_vm bench-startup
	csv=$out/startup.csv
	echo "cmd,reps,secs,ms_per_call,failures" >"$csv"
	tr -d '\r' <"$MB_VM_WORK/bench-startup.log" | grep '^MB-BENCH: startup ' | while read -r line; do
		echo "$(kv "$line" cmd),$(kv "$line" reps),$(kv "$line" secs),$(kv "$line" ms_per_call),$(kv "$line" failures)"
	done >>"$csv"
	{
		echo "## client start-up: whole process, module already loaded"
		echo
		echo "${MB_BENCH_STARTUP_SMP:-2} vCPUs. Each command run back to back ${MB_BENCH_REPS:-300} times from busybox sh, two rounds (second in reverse order); ms per call = wall time / calls (includes the shell's fork + exec). New client: this tree's (static-pie, fast path); old client: commit ${MB_BENCH_OLD_REV:-317eb22}'s, built as that tree's \`make build\` builds it. Both ask the same daemon."
		echo
		echo "| command | round 1 ms/call | round 2 ms/call | failures |"
		echo "| --- | ---: | ---: | ---: |"
		python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
names = {"busybox-true": "`/bin/busybox true` (fork+exec floor)",
         "modbroker-udev": "`modbroker load --udev e1000`, new client",
         "modbroker-old-udev": "`modbroker load --udev e1000`, old client",
         "kmod-modprobe": "`modprobe -q e1000` (kmod)", "busybox-modprobe": "`busybox modprobe -q e1000`",
         "modbroker-udev-aslr-off": "`modbroker load --udev e1000`, new client, randomize_va_space=0 (one round)",
         "kmod-modprobe-aslr-off": "`modprobe -q e1000` (kmod), randomize_va_space=0 (one round)"}
order, ms = [], {}
for r in rows:
    if r["cmd"] not in order:
        order.append(r["cmd"])
    ms.setdefault(r["cmd"], []).append(float(r["ms_per_call"]))
for c in order:
    rs = [r for r in rows if r["cmd"] == c]
    cells = [r["ms_per_call"] for r in rs] + [""]
    print(f'| {names.get(c, c)} | {cells[0]} | {cells[1]} | {sum(int(r["failures"]) for r in rs)} |')
def ratios(a, b):
    return " and ".join(f"{x / y:.2f}x" for x, y in zip(ms.get(a, []), ms.get(b, [])))
print()
print(f'New client / old client: {ratios("modbroker-udev", "modbroker-old-udev")} (rounds 1, 2; target at most 0.5x). '
      f'New client / kmod modprobe: {ratios("modbroker-udev", "kmod-modprobe")}.')
PY
		echo
	} | tee -a "$report"
	;;
esac
case " $parts " in *" startup-host "*)
	need valgrind valgrind
	need hyperfine hyperfine
	(cd "$REPO_ROOT" && make --no-print-directory build) >&2
	old=$(old_client)
	sock=$out/startup-host.sock
	"$target/release/modbrokerd" --socket "$sock" --module-dir "/lib/modules/$KVER" --log-level warn \
		--record-dir "$out/startup-host-record" &
	dpid=$!
	trap 'kill $dpid 2>/dev/null || true' EXIT
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
	[ -S "$sock" ] || die "modbrokerd did not bind $sock"
	new_cmd="$client --socket $sock load --udev unix"
	old_cmd="$old --socket $sock load --udev unix"
	kp_cmd="modprobe -S $KVER -q unix"
	for c in "$new_cmd" "$old_cmd" "$kp_cmd"; do
		$c >/dev/null || die "$c failed on the host"
	done
	# instr CMD...: "INSTRUCTIONS DISTINCT" of one whole process (callgrind, client only):
	# instructions executed, and distinct instruction addresses among them, which is what
	# qemu's TCG translates anew on each exec of a position-independent binary (noise-free).
	instr() {
		n=$(valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --callgrind-out-file="$out/cg.out" \
			"$@" 2>&1 >/dev/null | sed -n 's/.*Collected : //p')
		echo "$n $(grep -Eo '^0x[0-9a-f]+ ' "$out/cg.out" | sort -u | wc -l)"
	}
	# shellcheck disable=SC2086 # the commands are word lists without quoting
	i_true=$(instr /bin/true) i_new=$(instr $new_cmd) i_old=$(instr $old_cmd) i_kp=$(instr $kp_cmd)
	rm -f "$out/cg.out"
	runs=${MB_BENCH_HOST_RUNS:-1000}
	# Two rounds in opposite order; within a round hyperfine runs each command $runs times
	# (after 50 warm-up runs), without a shell (-N).
	hyperfine -N --warmup 50 --runs "$runs" --export-json "$out/startup-host-1.json" \
		"$new_cmd" "$old_cmd" "$kp_cmd" /bin/true >&2
	hyperfine -N --warmup 50 --runs "$runs" --export-json "$out/startup-host-2.json" \
		/bin/true "$kp_cmd" "$old_cmd" "$new_cmd" >&2
	kill $dpid; trap - EXIT
	{
		echo "## client start-up on the host (real CPU), builtin module"
		echo
		echo "\`modbroker load --udev unix\` (new client: this tree's, static-pie; old client: commit ${MB_BENCH_OLD_REV:-317eb22}'s, built as that tree's \`make build\` builds it) against a daemon over the $KVER tree vs \`modprobe -S $KVER -q unix\`; unix is builtin in $KVER, so all answer from the indexes without a syscall. Instructions: one whole process under callgrind (the daemon's share is not counted); distinct: how many different instruction addresses ran, which is what qemu's TCG translates afresh on every exec of a position-independent binary (the VM figures' main cost, free of timing noise). Wall: hyperfine -N, $runs runs each after 50 warm-up runs, two rounds in opposite order; mean (median) ms per whole process."
		echo
		python3 - "$out/startup-host-1.json" "$out/startup-host-2.json" "$i_new" "$i_old" "$i_kp" "$i_true" <<'PY'
import json, sys
rounds = [{r["command"]: r for r in json.load(open(f))["results"]} for f in sys.argv[1:3]]
instr = dict(zip(["new", "old", "kp", "true"], sys.argv[3:7]))
cmds = list(rounds[0])
keys = dict(zip(["new", "old", "kp", "true"], cmds))
label = {"new": "`modbroker load --udev unix`, new client", "old": "`modbroker load --udev unix`, old client",
         "kp": "`modprobe -q unix` (kmod)", "true": "`/bin/true` (floor)"}
print("| command | instructions | distinct | round 1 ms | round 2 ms | round 1 / modprobe | round 2 / modprobe |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for k in ["new", "old", "kp", "true"]:
    c = keys[k]
    cells = [f'{r[c]["mean"] * 1e3:.3f} ({r[c]["median"] * 1e3:.3f})' for r in rounds]
    rel = [f'{r[c]["mean"] / r[keys["kp"]]["mean"]:.2f}x' for r in rounds]
    total, distinct = instr[k].split()
    print(f'| {label[k]} | {total} | {distinct} | {cells[0]} | {cells[1]} | {rel[0]} | {rel[1]} |')
print()
new_old = " and ".join(f'{r[keys["new"]]["mean"] / r[keys["old"]]["mean"]:.2f}x' for r in rounds)
print(f"New client / modprobe (means): target at most 0.35x. New client / old client: {new_old}.")
PY
		echo
	} | tee -a "$report"
	;;
esac
echo "== report: $report" >&2
