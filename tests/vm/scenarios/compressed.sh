#!/bin/sh
# compressed.sh - compressed modules (.ko.xz, .ko.zst, .ko.gz) loaded through
# modbrokerd.  The image's tree has the modules named on the
# "# compress-modules:" line below replaced by compressed copies (done by
# build-initramfs.sh, then depmod; MB_VM_COMPRESS_MODULES overrides the list).
# For each load the expected syscall follows from the kernel:
#   - the format /sys/module/compression names (kernels >= 6.6 with
#     CONFIG_MODULE_DECOMPRESS): finit_module with flags 4
#     (MODULE_INIT_COMPRESSED_FILE), the kernel decompresses;
#   - any other compressed file: decompressed by modbrokerd, init_module;
#   - a plain .ko: finit_module with flags 0.
# Debian's 6.1 has no /sys/module/compression, so every compressed module
# here takes the user-space path.  On Debian's 6.12 (tests/vm/run-6.12.sh,
# "compressed@6.12" in VM_TESTS) the kernel decompresses xz: vfat stays the
# distro's .ko.xz (finit_module flags 4), fat and e1000 are recompressed as
# .ko.zst (user space, init_module); the mb_* specs are dropped there since
# the test modules exist only for the host's kernel.  Checks /proc/modules, the syscall and its
# caller (trace comm modbrokerd) for each module, a parameter passed through
# init_module, a burst of concurrent loads of a compressed module (one
# syscall), and the client's fallback (modbrokerd --oneshot) on a compressed
# module.  The test modules (extra/mb_*) only exist for the kernel they were
# built for: (b) and (c) run when the plain extra/mb_fail.ko is in the tree.
# needs: broker
# (No .ko.gz by default: Debian's kmod is built without zlib, so its depmod
# does not index .ko.gz files and libkmod could not resolve them; the gzip
# decoder is covered by the unit tests in src/module_file.rs.)
# compress-modules: xz:vfat zst:fat zst:mb_ok xz:mb_ok2 zst:e1000
set -eu
# shellcheck source=tests/vm/lib.sh
. /lib.sh

N=${MB_BURST:-16}
KCOMP=$(cat /sys/module/compression 2>/dev/null || true)
say "kernel decompresses: '${KCOMP:-nothing}' (/sys/module/compression)"

# modfile NAME: the module's path in modules.dep (relative to $MODDIR).
modfile() { sed -n "s@^\([^:]*/$1\.ko[.a-z]*\):.*@\1@p" "$MODDIR/modules.dep" | head -n1; }
# expected_call FILE: "finit_module flags 4", "init_module" or "finit_module flags 0".
expected_call() {
	case $1 in
	*.ko.xz) fmt=xz ;; *.ko.zst) fmt=zstd ;; *.ko.gz) fmt=gzip ;; *) fmt= ;;
	esac
	if [ -z "$fmt" ]; then echo "finit_module flags 0"
	elif [ "$fmt" = "$KCOMP" ]; then echo "finit_module flags 4"
	else echo "init_module"
	fi
}
# Load syscalls since trace_reset, each as "COMM SYSCALL [flags N]".
calls_seen() {
	grep -E ' sys_(finit|init)_module\(' "$TRACE/trace" |
	sed -E 's/^ *(.*)-[0-9]+ +\[.*sys_(finit_module|init_module)\((.*)\).*/\1 \2 \3/' |
	sed -E 's/ (finit_module) .*flags: (0x)?([0-9a-f]+).*/ \1 flags \3/; s/ (init_module) .*/ \1/' |
	sed -E 's/flags 0*([0-9a-f]+)$/flags \1/'
}
# check_loads TAG MODULE...: for each module, one load syscall of the
# expected kind by modbrokerd, and it is in /proc/modules.
check_loads() {
	tag=$1; shift
	calls_seen >/tmp/calls
	sed 's/^/  load syscall: /' /tmp/calls
	check_eq "($tag) $# load syscalls in all" "$#" "$(wc -l </tmp/calls)"
	for m in "$@"; do
		f=$(modfile "$m"); want=$(expected_call "$f")
		check "($tag) $m ($f) in /proc/modules" is_loaded "$m"
		COVERED="$COVERED $f"
		n=$(grep -c "^modbrokerd $want\$" /tmp/calls || true)
		say "$m: $f -> expect '$want' by modbrokerd"
		check "($tag) a '$want' call by modbrokerd for $m" test "$n" -ge 1
	done
	check_eq "($tag) every load syscall returned 0" "" "$({ syscall_results finit_module; syscall_results init_module; } | grep -v '^0$' | tr '\n' ' ')"
}
COVERED=

step "module tree"
for m in vfat fat mb_fail mb_ok mb_ok2 e1000; do say "$m: $(modfile "$m")"; done
f=$(modfile vfat)
case $f in *.ko.xz|*.ko.zst|*.ko.gz) pass "vfat is stored compressed ($f)" ;; *) fail "vfat is stored compressed" "modules.dep has '$f'" ;; esac
check "$MODDIR/$f exists" test -f "$MODDIR/$f"

step "start modbrokerd"
daemon_up "modbrokerd is listening on $SOCK"

step "(a) modbroker load vfat (with its dependency fat)"
trace_reset
mb_run a load vfat
check_eq "(a) exit 0" 0 "$MB_RC"
check_loads a fat vfat

if [ -n "$(modfile mb_fail)" ]; then
	check "test modules: mb_ok is in modules.dep" test -n "$(modfile mb_ok)"
	check "test modules: mb_ok2 is in modules.dep" test -n "$(modfile mb_ok2)"
	step "(b) modbroker load mb_ok value=42 (parameter through the load call)"
	trace_reset; kmsg_mark
	mb_run b load mb_ok value=42
	check_eq "(b) exit 0" 0 "$MB_RC"
	check_loads b mb_ok
	check_eq "(b) /sys/module/mb_ok/parameters/value" 42 "$(cat /sys/module/mb_ok/parameters/value 2>&1)"
	check_eq "(b) 1 'mb_ok: init value=42' in dmesg" 1 "$(kmsg_since 'mb_ok: init value=42')"

	step "(c) burst: $N x modbroker load mb_ok2"
	trace_reset; kmsg_mark
	burst "$N" /tmp/bc modbroker load mb_ok2
	check_loads c mb_ok2
	check_eq "(c) exactly 1 'mb_ok2: init'" 1 "$(kmsg_since 'mb_ok2: init')"
	check_eq "(c) all $N clients exited 0" "$N" "$(burst_rc_count /tmp/bc 0)"
else
	# No test modules for this kernel (6.12): the burst uses a distro module
	# with no dependencies, kept as the distro shipped it.
	say "(b) needs the mb_ok test module, which exists for the host's kernel only: not run on $(uname -r)"
	step "(c) burst: $N x modbroker load nf_defrag_ipv4 (distro module, $(modfile nf_defrag_ipv4))"
	trace_reset
	burst "$N" /tmp/bc modbroker load nf_defrag_ipv4
	check_loads c nf_defrag_ipv4
	check_eq "(c) all $N clients exited 0" "$N" "$(burst_rc_count /tmp/bc 0)"
fi

step "(d) fallback: daemon stopped, modbroker load e1000 by modalias"
stop_daemon
alias=$(e1000_modalias) || alias=
check "(d) qemu's e1000 NIC present" test -n "$alias"
trace_reset
mb_run d load "$alias"
check_eq "(d) exit 0" 0 "$MB_RC"
check "(d) stderr says daemon unreachable" grep -q 'daemon unreachable' "$MB_ERR"
check_loads d e1000

step "summary"
say "module files loaded:$COVERED"
ucount=0
for f in $COVERED; do
	[ "$(expected_call "$f")" = init_module ] && ucount=$((ucount + 1))
done
if [ -z "$KCOMP" ]; then
	# No in-kernel decompression: every compressed file went through user space.
	check "user-space decompression covered (>= 3 compressed modules: $ucount)" test "$ucount" -ge 3
	for ext in xz zst; do
		check "a .ko.$ext module was loaded" sh -c "echo '$COVERED' | grep -q '\.ko\.$ext'"
	done
else
	# 6.12 (run-6.12.sh): its own .ko.xz by the kernel, the modules stored
	# as .ko.zst by the image builder through user space.
	check "user-space decompression covered too (>= 1 module in a format the kernel lacks: $ucount)" test "$ucount" -ge 1
	check "in-kernel decompression ($KCOMP) covered" sh -c "for f in $COVERED; do case \$f in *.ko.xz) [ '$KCOMP' = xz ] && exit 0 ;; *.ko.zst) [ '$KCOMP' = zstd ] && exit 0 ;; *.ko.gz) [ '$KCOMP' = gzip ] && exit 0 ;; esac; done; exit 1"
fi

finish
