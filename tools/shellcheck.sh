#!/bin/bash
# tools/shellcheck.sh - run shellcheck on every shell file git tracks, in the dialect it runs in:
#   initramfs-tools/*                     sh (busybox or klibc sh in the initramfs)
#   debian/[PKG.]{pre,post}{inst,rm}, config   sh (Debian maintainer scripts)
#   dracut/*/module-setup.sh              bash (dracut sources it)
#   anything else                         its shebang (sh, dash, bash, ksh; also via env), or
#                                         for a sourced file without one, its directive
#                                         `# shellcheck shell=DIALECT` before the first command
# debian/rules is a makefile and other shebangs (python3, awk) are other languages: not checked.
# Sourced files are followed (-x) from the script's own directory (-P SCRIPTDIR); a path only
# known at run time (/lib.sh in the VM) is named by a `# shellcheck source=PATH` directive.
# Prints every finding and exits 1 on any. A file that looks like shell (*.sh, a shell shebang)
# but whose dialect it cannot tell also fails it, so a new shell file is never skipped silently.
# Run by `make lint`. Options for shellcheck itself go in SHELLCHECK_OPTS (e.g. -f gcc).
#
# Usage: tools/shellcheck.sh
set -eu
cd "$(dirname "$0")/.."
command -v shellcheck >/dev/null || { echo "shellcheck missing: install the Debian package 'shellcheck'" >&2; exit 1; }

# dialect NAME: NAME if shellcheck knows that dialect, else nothing.
dialect() {
	case $1 in
	sh | dash | bash | ksh) echo "$1" ;;
	esac
}

# classify FILE: prints FILE's dialect, or nothing if FILE is not shell. Returns 1, with the
# reason on stderr, if FILE looks like shell but its dialect is unknown.
classify() {
	local f=$1 first="" interp="" d w words
	case $f in
	initramfs-tools/*) echo sh; return ;;
	debian/rules) return ;;
	debian/preinst | debian/postinst | debian/prerm | debian/postrm | debian/config | \
		debian/*.preinst | debian/*.postinst | debian/*.prerm | debian/*.postrm | debian/*.config)
		echo sh; return ;;
	dracut/*/module-setup.sh) echo bash; return ;;
	esac
	IFS= read -r first <"$f" || true
	if [[ $first == '#!'* ]]; then
		read -r -a words <<<"${first#'#!'}"
		interp=${words[0]:-}
		case ${interp##*/} in
		env) # #!/usr/bin/env [-S] [NAME=VALUE]... bash
			for w in "${words[@]:1}"; do
				case $w in -* | *=*) ;; *) interp=$w; break ;; esac
			done ;;
		busybox) [ "${words[1]:-}" != sh ] || interp="sh" ;;
		esac
		interp=${interp##*/}
		d=$(dialect "$interp")
		if [ -n "$d" ]; then
			echo "$d"
		elif [[ $interp == *sh ]]; then
			echo "$f: shebang runs '$interp': shellcheck knows only sh, dash, bash and ksh" >&2
			return 1
		elif [[ $f == *.sh ]]; then
			echo "$f: named *.sh but its shebang runs '$interp'" >&2
			return 1
		fi
		return
	fi
	# No shebang: the directive, among the comments before the first command.
	d=$(sed -n '/^[[:space:]]*$/d; /^[^#]/q; s/^#[[:space:]]*shellcheck[[:space:]].*shell=\([a-z]*\).*/\1/p' "$f")
	if [ -n "$d" ]; then
		if [ -z "$(dialect "$d")" ]; then
			echo "$f: '# shellcheck shell=$d': shellcheck knows only sh, dash, bash and ksh" >&2
			return 1
		fi
		echo "$d"
	elif [[ $f == *.sh ]]; then
		echo "$f: *.sh without a shebang or a '# shellcheck shell=DIALECT' directive" >&2
		return 1
	fi
}

declare -A files=() # dialect -> newline-separated paths
unknown=0
git rev-parse --git-dir >/dev/null || { echo "shellcheck: not in a git work tree" >&2; exit 1; }
mapfile -d '' -t tracked < <(git ls-files -z)
for f in "${tracked[@]}"; do
	[ -f "$f" ] || continue # deleted in the work tree, or a submodule
	if ! d=$(classify "$f"); then
		unknown=$((unknown + 1))
	elif [ -n "$d" ]; then
		files[$d]+="$f"$'\n'
	fi
done

status=0
total=0
summary=""
for d in bash dash ksh sh; do
	[ -n "${files[$d]:-}" ] || continue
	mapfile -t list <<<"${files[$d]%$'\n'}"
	total=$((total + ${#list[@]}))
	summary="${summary:+$summary, }$d ${#list[@]}"
	shellcheck -x -P SCRIPTDIR -s "$d" -- "${list[@]}" || status=1
done
if [ "$unknown" -gt 0 ]; then
	echo "shellcheck: $unknown file(s) above of unknown dialect: add a shebang or a '# shellcheck shell=DIALECT' directive" >&2
	status=1
fi
if [ "$total" -eq 0 ]; then
	echo "shellcheck: no shell files found" >&2
	status=1
fi
if [ "$status" -ne 0 ]; then
	echo "shellcheck: FAILED ($total files: $summary)" >&2
	exit 1
fi
echo "shellcheck: $total files ($summary): no findings"
