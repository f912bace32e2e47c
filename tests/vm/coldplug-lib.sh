# shellcheck shell=bash
# coldplug-lib.sh - host-side helpers shared by test-coldplug.sh and
# bench-coldplug.sh (sourced, not run).  One "pair" is two boots of the same
# initramfs and VM layout running scenarios/coldplug.sh, once with
# mb.coldplug=builtin and once with mb.coldplug=broker; each console log is
# reduced by coldplug-analyze.awk to a KEY=VALUE file.
#
#   cp_build_initrd OUT      whole module tree + udev + broker, $MB_VM_COMPRESS (lz4)
#   cp_run MODE SMP TAG      boot once; writes $MB_VM_WORK/coldplug-TAG-MODE.{log,kv};
#                            returns run.sh's status (VM checks, timeout)
#   cp_get KVFILE KEY        one value (empty if absent)
#   cp_table KV...           markdown table, one column per KV file
#   cp_judge BUILTIN_KV BROKER_KV   the coldplug pass criteria; prints each,
#                            returns non-zero if any fails
# Env as for run.sh; defaults here: MB_VM_MEM 3072, MB_VM_TIMEOUT 900.
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need qemu-system-x86_64 qemu-system-x86
need lz4 lz4
need awk mawk

export MB_VM_MEM=${MB_VM_MEM:-3072}
export MB_VM_TIMEOUT=${MB_VM_TIMEOUT:-900}
export MODBROKERD=${MODBROKERD:-$REPO_ROOT/target/release/modbrokerd}
export MODBROKER=${MODBROKER:-$REPO_ROOT/target/release/modbroker}
CP_SCENARIO=$REPO_ROOT/tests/vm/scenarios/coldplug.sh
CP_AWK=$REPO_ROOT/tests/vm/coldplug-analyze.awk

cp_build_initrd() {
	for b in "$MODBROKERD" "$MODBROKER"; do
		[ -x "$b" ] || die "$b not found: build it first (cargo build --release) or set MODBROKERD/MODBROKER"
	done
	MB_VM_MODULES=all MB_VM_UDEV=1 MB_VM_COMPRESS=${MB_VM_COMPRESS:-lz4} \
		"$REPO_ROOT/tests/vm/build-initramfs.sh" "$CP_SCENARIO" "$1"
}

cp_run() { # MODE SMP TAG  (needs CP_INITRD)
	local mode=$1 smp=$2 tag=$3 rc=0
	local log=$MB_VM_WORK/coldplug-$tag-$mode.log kv=$MB_VM_WORK/coldplug-$tag-$mode.kv
	set +e
	MB_VM_SMP=$smp MB_VM_INITRD=$CP_INITRD MB_VM_LOG=$log \
		MB_VM_APPEND="mb.coldplug=$mode ${MB_VM_APPEND:-}" \
		"$REPO_ROOT/tests/vm/run.sh" coldplug | grep -v -E '^MB-(TRACE|MODULE)'
	rc=${PIPESTATUS[0]}
	set -e
	[ "$rc" = 0 ] || rc=1
	{ awk -f "$CP_AWK" "$log"; echo "vm_result=$([ "$rc" = 0 ] && echo PASS || echo FAIL)"; } >"$kv"
	return "$rc"
}

cp_get() { sed -n "s/^$2=//p" "$1" | head -n1; }

# cp_table KV...: rows = measurements, columns = runs ("8 vCPU builtin", ...)
cp_table() {
	local f results r row
	results=$(cat "$@" | sed -n 's/^r_\([^=]*\)=.*/\1/p' | sort -u | awk '$0=="0"{print; next} {a[++n]=$0} END{for(i=1;i<=n;i++) print a[i]}')
	row="| |"; for f; do row="$row $(cp_get "$f" cpus) vCPU $(cp_get "$f" mode) |"; done; echo "$row"
	row="| --- |"; for f; do row="$row ---: |"; done; echo "$row"
	cp_row "trigger+settle (s)" settle "$@"
	cp_row "finit_module calls" finit "$@"
	cp_row "init_module calls" init "$@"
	for r in $results; do
		cp_row "calls returning $([ "$r" = 0 ] && echo 0 || echo "-$r")" "r_$r" "$@"
	done
	cp_row "distinct modules attempted" distinct_attempted "$@"
	cp_row "modules loaded" modules_loaded "$@"
	cp_row "EEXIST on an already-live module" eexist_live "$@"
	cp_row "modbroker client execs" client_execs "$@"
	cp_row "unattributed calls" unattributed "$@"
	cp_row "VM checks" vm_result "$@"
}
cp_row() { # LABEL KEY KV...
	local label=$1 key=$2 f v row; shift 2
	row="| $label |"
	for f; do v=$(cp_get "$f" "$key"); row="$row ${v:-0} |"; done
	echo "$row"
}

# cp_judge BUILTIN_KV BROKER_KV
cp_judge() {
	local b=$1 k=$2 bad=0 calls distinct v f
	cp_ok() { echo "coldplug: PASS $1"; }
	cp_bad() { echo "coldplug: FAIL $1"; bad=1; }
	for f in "$b" "$k"; do
		v=$(cp_get "$f" mode)
		if [ "$(cp_get "$f" vm_result)" = PASS ]; then
			cp_ok "$v run: VM checks passed"
		else
			cp_bad "$v run: VM checks failed (see $(basename "$f" .kv).log)"
		fi
		if [ "$(cp_get "$f" unattributed)" = 0 ] && [ "$(cp_get "$f" attrib_mismatch)" = 0 ]; then
			cp_ok "$v run: every load call attributed to a module, consistent with module_load"
		else
			cp_bad "$v run: $(cp_get "$f" unattributed) unattributed, $(cp_get "$f" attrib_mismatch) mismatched calls"
		fi
		if [ "$(cp_get "$f" calls)" -gt 0 ]; then
			cp_ok "$v run: $(cp_get "$f" calls) load calls traced"
		else
			cp_bad "$v run: no load calls traced"
		fi
	done
	if [ -n "$(cp_get "$b" after_list)" ] && [ "$(cp_get "$b" after_list)" = "$(cp_get "$k" after_list)" ]; then
		cp_ok "same $(cp_get "$b" modules_after) modules in /proc/modules in both runs"
	else
		cp_bad "/proc/modules differs: builtin only: $(comm -23 <(cp_get "$b" after_list | tr , '\n') <(cp_get "$k" after_list | tr , '\n') | tr '\n' ' ')broker only: $(comm -13 <(cp_get "$b" after_list | tr , '\n') <(cp_get "$k" after_list | tr , '\n') | tr '\n' ' ')"
	fi
	calls=$(cp_get "$k" calls); distinct=$(cp_get "$k" distinct_attempted)
	if [ "$calls" -le "$distinct" ]; then
		cp_ok "broker: $calls load calls for $distinct distinct modules attempted"
	else
		cp_bad "broker: $calls load calls for $distinct distinct modules attempted"
	fi
	if [ "$(cp_get "$k" ebusy)" = 0 ]; then
		cp_ok "broker: no call returned EBUSY"
	else
		cp_bad "broker: $(cp_get "$k" ebusy) calls returned EBUSY"
	fi
	if [ "$(cp_get "$k" eexist_live)" = 0 ]; then
		cp_ok "broker: no EEXIST for an already-live module"
	else
		cp_bad "broker: $(cp_get "$k" eexist_live) calls returned EEXIST for an already-live module"
	fi
	return "$bad"
}
