#!/bin/bash
# tests/diff/run.sh - the differential test: `modbroker resolve --show-depends` against
# `modprobe --show-depends` from the same kmod, on whole Debian module trees and on kmod's own
# test trees (`make diff-test`; needs the release build). See tests/README.md.
#
# Trees: Debian 12 (kmod 30, 6.1) and Debian 13 (kmod 34, 6.12), the debootstrap trees of the
# real-boot tests (tests/boot/lib.sh base_tree: cached in build/boot, built when missing), and
# the test-modprobe trees of kmod's testsuite (tests/diff/kmod-testsuite, bound over the Debian
# tree's /lib/modules as /lib/modules/4.4.4). Both tools run inside the tree (chroot, in a
# private mount namespace), so that modprobe and modbrokerd use the tree's libkmod. Per configuration
# (tests/diff/conf/NAME, plus kmod's test-blacklist and module-param-kcmdline2..9), the
# namespace has:
#   /etc/modprobe.d  the configuration's *.conf (the tree's /lib/modprobe.d stays as it is);
#   /proc/cmdline    the configuration's `cmdline` file, else an empty one (libkmod reads the
#                    kernel command line from /proc/cmdline itself);
#   /mnt             build/diff: the binaries and the run's files.
# With and without -b, every target goes through one batch of each tool:
#   modprobe -S KVER -a [-b] --show-depends SEP T1 SEP T2 ...      (xargs splits the list)
#   modbroker --module-dir DIR resolve --show-depends [-b] -       (the same list on stdin)
# SEP has a configuration line of its own (`install modbroker-diff-sep :modbroker-diff-sep:`),
# so both print one line before each target's lines. Then the targets for which both printed
# nothing (blacklisted or no match: told apart by the exit status) and every 499th target run
# one by one through both, which compares exit statuses and checks the batches against single
# runs. Any difference fails unless tests/diff/allowed explains it (README: Differences from
# modprobe).

set -euo pipefail
DIFF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$DIFF_DIR/../.." && pwd)
# shellcheck source=../boot/lib.sh
. "$REPO_ROOT/tests/boot/lib.sh"

WORK=${MB_DIFF_WORK:-$REPO_ROOT/build/diff}
BIN=${MB_DIFF_BIN:-$REPO_ROOT/target/release}
SAMPLE_EVERY=${MB_DIFF_SAMPLE_EVERY:-499}
SEP=modbroker-diff-sep
KMOD_TS=$DIFF_DIR/kmod-testsuite

say() { echo "diff-test: $*" >&2; }
# MB_DIFF_RUNS=REGEX runs only the runs whose name (bookworm/none, trixie/kmod:builtin) matches.
selected() { [[ $1 =~ ${MB_DIFF_RUNS:-.} ]]; }

# The targets of a module tree (modules.dep's modules, modules.alias's aliases) or of
# configuration files (every name they mention), made concrete: an alias is an fnmatch pattern,
# and the kernel would send a string it matches (`*` matches nothing, `?` and `[...]` one char).
tree_names() {
	sed -n 's|^\([^:]*/\)\{0,1\}\([^/:]*\)\.ko[^:/]*:.*|\2|p' "$1/modules.dep"
	awk '$1 == "alias" { print $2 }' "$1/modules.alias"
}
conf_names() {
	{ cat "$@" 2>/dev/null || :; } | awk '
		$1 ~ /^(alias|options|install|remove|blacklist)$/ { print $2 }
		$1 ~ /^(softdep|weakdep)$/ { for (i = 2; i <= NF; i++) if ($i !~ /:$/) print $i }'
}
cmdline_names() {
	tr ' ' '\n' <"$1" | sed -n 's/^modprobe\.blacklist=//p; s/^"\{0,1\}\([^=."/]*\)\..*/\1/p' | tr ',' '\n' | grep -v '^modprobe$' || true
}
# The modules of module directory $1 that need one of the modules named on stdin.
dependents() {
	awk 'NR == FNR { gsub("-", "_"); want[$0] = 1; next }
		{ for (i = 2; i <= NF; i++) { m = $i; sub(/.*\//, "", m); sub(/\.ko.*/, "", m); gsub("-", "_", m); if (m in want) { print $1; break } } }' \
		- "$1/modules.dep" | sed 's|.*/||; s|\.ko.*||'
}
concrete() {
	sed -e 's/\[\(.\)[^]]*\]/\1/g' -e 's/\*//g' -e 's/?/0/g' | awk 'NF && !seen[$0]++'
}

# run NAME ROOT KVER CONF TARGETS [MODULES HOME]: one configuration on one tree, both scopes.
# CONF: a directory of *.conf and an optional `cmdline`; TARGETS: a file; MODULES, HOME:
# directories to bind at /lib/modules and /home.
run() {
	local name=$1 root=$2 kver=$3 conf=$4 run=$WORK/$1
	mkdir -p "$run/modprobe.d"
	cp "$conf"/*.conf "$run/modprobe.d/" 2>/dev/null || true
	echo "install $SEP :$SEP:" >"$run/modprobe.d/zz-modbroker-diff-sep.conf"
	if [ -f "$conf/cmdline" ]; then cp "$conf/cmdline" "$run/cmdline"; else : >"$run/cmdline"; fi
	{
		cat "$5"
		conf_names "$run"/modprobe.d/*.conf "$root"/lib/modprobe.d/*.conf
		cmdline_names "$run/cmdline"
	} | grep -vx "$SEP" | concrete >"$run/targets"
	awk -v sep="$SEP" '{ print sep; print }' "$run/targets" >"$run/args"
	unshare -m "$0" --in-namespace "$root" "$kver" "$run" "${6:-}" "${7:-}"
	for b in "" -b; do
		local counts
		awk -v run="$name" -f "$DIFF_DIR/compare.awk" "$DIFF_DIR/allowed" "$run/modprobe$b.blocks" "$run/ours$b.blocks" >"$run/batch$b.cmp"
		awk -v run="$name" -f "$DIFF_DIR/compare.awk" "$DIFF_DIR/allowed" "$run/modprobe$b.single" "$run/ours$b.single" >"$run/single$b.cmp"
		# The batch against single runs of the same modprobe: the exit status aside, the same lines.
		awk -F '\t' 'NR == FNR { b[$1] = $2; next } { sub(/(\037)?exit [0-9]+$/, "", $2) } b[$1] != $2 { print "batch and single modprobe differ for " $1 }' \
			"$run/modprobe$b.blocks" "$run/modprobe$b.single" >"$run/batch$b.check"
		counts=$(awk -F '\t' '$1 == "C" { t += $5; s += $2; a += $3; d += $4 } END { print t, s, a, d }' "$run/batch$b.cmp")
		read -r total same allowed different <<<"$counts"
		local singles single_diff single_allowed
		singles=$(wc -l <"$run/singles$b")
		single_diff=$(grep -c '^D' "$run/single$b.cmp" || true)
		single_allowed=$(grep -c '^A' "$run/single$b.cmp" || true)
		different=$((different + single_diff + $(wc -l <"$run/batch$b.check")))
		printf '%-34s %-3s %6d targets %6d same %3d allowed  %4d one by one (%d allowed)  %d DIFFERENT\n' \
			"$name" "${b:--}" "$total" "$same" "$allowed" "$singles" "$single_allowed" "$different" | tee -a "$WORK/summary" >&2
		cat "$run/batch$b.check" >>"$WORK/differences"
		grep '^D' "$run/batch$b.cmp" "$run/single$b.cmp" | sed "s|^|$name ${b:--} |" >>"$WORK/differences" || true
		grep -h '^A' "$run/batch$b.cmp" "$run/single$b.cmp" | sed "s|^|$name ${b:--} |" >>"$WORK/allowed-seen" || true
	done
}

# Inside the private mount namespace: binds, then both tools, batch and one by one.
in_namespace() {
	local root=$1 kver=$2 run=$3 modtree=$4 home=$5 b
	local dir=/mnt${run#"$WORK"}
	mount -t proc proc "$root/proc"
	mount --bind "$run/cmdline" "$root/proc/cmdline"
	mount --bind "$run/modprobe.d" "$root/etc/modprobe.d"
	mount --bind "$WORK" "$root/mnt"
	[ -z "$modtree" ] || mount --bind "$modtree" "$root/lib/modules"
	[ -z "$home" ] || mount --bind "$home" "$root/home"
	for b in "" -b; do
		# The two tools at once (two cores); modprobe -a exits 1 (xargs 123) if a target matched
		# nothing, and so does modbroker.
		{ chroot "$root" xargs -d '\n' -a "$dir/args" modprobe -S "$kver" -a $b --show-depends \
			>"$run/modprobe$b.out" 2>"$run/modprobe$b.err" || [ $? = 123 ]; } &
		local modprobe=$!
		chroot "$root" /mnt/bin/modbroker --module-dir "/lib/modules/$kver" resolve --show-depends $b - \
			<"$run/args" >"$run/ours$b.out" 2>"$run/ours$b.err" || [ $? = 1 ] ||
			die "modbroker failed in $root: $(tail -n 3 "$run/ours$b.err")"
		wait "$modprobe" || die "modprobe failed in $root: $(tail -n 3 "$run/modprobe$b.err")"
		awk -v sep="install :$SEP: " -f "$DIFF_DIR/blocks.awk" "$run/targets" "$run/modprobe$b.out" >"$run/modprobe$b.blocks"
		awk -v sep="install :$SEP: " -f "$DIFF_DIR/blocks.awk" "$run/targets" "$run/ours$b.out" >"$run/ours$b.blocks"
		local every=$SAMPLE_EVERY
		[ -z "$modtree" ] || every=1
		awk -v every="$every" -f "$DIFF_DIR/compare.awk" "$DIFF_DIR/allowed" "$run/modprobe$b.blocks" "$run/ours$b.blocks" |
			awk -F '\t' '$1 == "S" { print $2 }' >"$run/singles$b"
		# shellcheck disable=SC2016 # expanded by the chroot's sh
		chroot "$root" sh -c 'while IFS= read -r t; do modprobe -S "$0" $1 --show-depends -- "$t" 2>/dev/null; echo "exit $?"; done' \
			"$kver" "$b" <"$run/singles$b" >"$run/modprobe$b.single.out" &
		modprobe=$!
		# shellcheck disable=SC2016
		chroot "$root" sh -c 'while IFS= read -r t; do /mnt/bin/modbroker --module-dir "/lib/modules/$0" resolve --show-depends $1 -- "$t" 2>/dev/null; echo "exit $?"; done' \
			"$kver" "$b" <"$run/singles$b" >"$run/ours$b.single.out"
		wait "$modprobe"
		awk -v ends=1 -f "$DIFF_DIR/blocks.awk" "$run/singles$b" "$run/modprobe$b.single.out" >"$run/modprobe$b.single"
		awk -v ends=1 -f "$DIFF_DIR/blocks.awk" "$run/singles$b" "$run/ours$b.single.out" >"$run/ours$b.single"
	done
}

# kmod's test-modprobe cases (tests/diff/kmod-testsuite/cases) on one Debian tree's kmod; and
# each expected output (correct*.txt) against that modprobe's.
kmod_cases() {
	local root=$1 dist=$2 case
	for case in $(awk '!/^#/ && NF { print $1 }' "$KMOD_TS/cases" | uniq); do
		selected "$dist/kmod:$case" || continue
		local dir=$KMOD_TS/test-modprobe/$case conf=$WORK/kmodconf/$case tree=$WORK/kmodtree/$case ko
		mkdir -p "$conf" "$tree/lib/modules" "$tree/home"
		cp -r "$dir/lib/modules/4.4.4" "$tree/lib/modules/"
		# --show-depends reads no module, but libkmod stats each dependency's file (and modprobe a
		# path target): empty files stand for the .ko files kmod's testsuite builds.
		{ tr ' ' '\n' <"$dir/lib/modules/4.4.4/modules.dep" | sed -n 's/:$//; /\.ko/p'; awk -v c="$case" '$1 == c && $2 ~ /^\/home\// { print $2 }' "$KMOD_TS/cases"; } |
			while read -r ko; do
				case $ko in
				/lib/modules/* | /home/*) ko=$tree$ko ;;
				/*) die "$case: no placeholder for $ko" ;;
				*) ko=$tree/lib/modules/4.4.4/$ko ;;
				esac
				mkdir -p "${ko%/*}"
				: >"$ko"
			done
		cp "$dir"/etc/modprobe.d/*.conf "$conf/" 2>/dev/null || true
		[ ! -f "$dir/proc/cmdline" ] || cp "$dir/proc/cmdline" "$conf/cmdline"
		awk -v c="$case" '$1 == c { print $2 }' "$KMOD_TS/cases" >"$conf/targets"
		run "$dist/kmod:$case" "$root" 4.4.4 "$conf" "$conf/targets" "$tree/lib/modules" "$tree/home"
		awk -v c="$case" '$1 == c && $3 != "" { print $2, $3 }' "$KMOD_TS/cases" | while read -r target expected; do
			if ! awk -F '\t' -v t="$target" '$1 == t { sub(/(\037)?exit [0-9]+$/, "", $2); gsub("\037", "\n", $2); printf "%s", $2 (($2 == "") ? "" : "\n") }' \
				"$WORK/$dist/kmod:$case/modprobe.single" | cmp -s - "$dir/$expected"; then
				echo "$dist kmod:$case: modprobe --show-depends $target is not $expected" >>"$WORK/differences"
				say "$dist kmod:$case: modprobe --show-depends $target differs from $expected"
			fi
		done
	done
}

# The comparison must see a difference: compare.awk on made-up blocks (one a line: target,
# modprobe's block, ours, the verdict expected), in a run the allowed list's softdep entries
# cover.
self_check() {
	local t theirs ours want got
	while IFS='|' read -r t theirs ours want; do
		printf '%s\t%s\n' "$t" "$theirs" | tr '~' '\037' >"$WORK/check.modprobe"
		printf '%s\t%s\n' "$t" "$ours" | tr '~' '\037' >"$WORK/check.ours"
		got=$(awk -v run=self/softdep -f "$DIFF_DIR/compare.awk" "$DIFF_DIR/allowed" "$WORK/check.modprobe" "$WORK/check.ours" | cut -f1 | head -n1)
		[ "$got" = "$want" ] || die "compare.awk self-check: $t: $theirs against $ours gave ${got:-nothing}, not $want"
	done <<-'EOF'
		x|insmod /a.ko |insmod /b.ko |D
		x|insmod /a.ko |insmod /a.ko x=1 |D
		x|insmod /a.ko ~insmod /b.ko |insmod /b.ko ~insmod /a.ko |D
		x|exit 0|exit 1|D
		x|insmod /nlmon.ko ~insmod /nlmon.ko |insmod /nlmon.ko |A
		x|insmod /a.ko ~insmod /a.ko |insmod /a.ko |D
		x|insmod /nlmon.ko ~insmod /a.ko |insmod /a.ko |D
		x|insmod /a.ko ~insmod /nlmon.ko |insmod /a.ko ~insmod /nlmon.ko |C
	EOF
}

main() {
	need unshare util-linux
	need chroot coreutils
	need awk mawk
	for b in modbroker modbrokerd; do
		[ -x "$BIN/$b" ] || die "$BIN/$b is missing: run 'make build' first"
	done
	local start dist gen root kver conf n names
	start=$(date +%s)
	# Mounts live in private namespaces that end with each run: nothing can be left mounted.
	rm -rf --one-file-system "$WORK"
	mkdir -p "$WORK/bin" "$WORK/kmodconf"
	cp "$BIN/modbroker" "$BIN/modbrokerd" "$WORK/bin/"
	: >"$WORK/summary"
	: >"$WORK/differences"
	: >"$WORK/allowed-seen"
	self_check
	# kmod's test-blacklist configuration and module-param-kcmdline2..9 command lines, on the
	# Debian trees (their modules are the Debian ones: psmouse, parport, floppy, pcspkr).
	mkdir -p "$WORK/kmodconf/test-blacklist"
	cp "$KMOD_TS/test-blacklist/etc/modprobe.d/modprobe.conf" "$WORK/kmodconf/test-blacklist/test-blacklist.conf"
	for n in 2 3 4 5 6 7 8 9; do
		mkdir -p "$WORK/kmodconf/kcmdline$n"
		cp "$KMOD_TS/test-modprobe/module-param-kcmdline$n/proc/cmdline" "$WORK/kmodconf/kcmdline$n/cmdline"
	done
	for spec in "bookworm initramfs-tools" "trixie dracut"; do
		read -r dist gen <<<"$spec"
		root=$(base_tree "$dist" "$gen")
		kver=$(ls "$root/lib/modules")
		[ "$(echo "$kver" | wc -l)" = 1 ] || die "expected one kernel in $root/lib/modules, found: $kver"
		# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
		say "$dist: kernel $kver, $(chroot "$root" dpkg-query -W -f '${Package} ${Version}' kmod)"
		tree_names "$root/lib/modules/$kver" | concrete >"$WORK/$dist.targets"
		for conf in "$DIFF_DIR"/conf/*; do
			selected "$dist/${conf##*/}" || continue
			run "$dist/${conf##*/}" "$root" "$kver" "$conf" "$WORK/$dist.targets"
		done
		# kmod's configurations only name a few modules: those, and the modules that need them.
		for conf in "$WORK"/kmodconf/test-blacklist "$WORK"/kmodconf/kcmdline*; do
			selected "$dist/${conf##*/}" || continue
			names=$({ conf_names "$conf"/*.conf; [ ! -f "$conf/cmdline" ] || cmdline_names "$conf/cmdline"; } | concrete)
			{ echo "$names"; dependents "$root/lib/modules/$kver" <<<"$names"; } >"$WORK/related"
			run "$dist/${conf##*/}" "$root" "$kver" "$conf" "$WORK/related"
		done
		kmod_cases "$root" "$dist"
	done
	say "allowed differences seen (tests/diff/allowed):"
	cut -f1,2 "$WORK/allowed-seen" | sed 's/ A\t/ /' | sort | uniq -c | sed 's/^/    /' >&2
	say "$(awk '{ t += $3 } END { print t + 0 }' "$WORK/summary") targets compared in $(wc -l <"$WORK/summary") runs, $(($(date +%s) - start)) s"
	if [ -s "$WORK/differences" ]; then
		say "DIFFERENCES ($(wc -l <"$WORK/differences"); all in $WORK/differences; fields: run scope D target ours modprobe):"
		head -n 40 "$WORK/differences" | tr '\037' '|' >&2
		exit 1
	fi
	say "no differences"
}

if [ "${1:-}" = --in-namespace ]; then
	shift
	in_namespace "$@"
	exit
fi
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || die "needs root (chroot, mount namespaces), or sudo"
	exec sudo -E "$0" "$@"
fi
main "$@"
