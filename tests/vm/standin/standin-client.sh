#!/bin/sh
# standin-client.sh - NOT modbroker.  Harness self-test only: a busybox-sh
# imitation of the modbroker client interface, good enough to exercise
# broker.sh/demo.sh before the real binaries exist.  Requests for the same
# module name are merged with a mkdir spin lock (Debian's busybox has no
# flock): a request that waited on the lock while another one loaded takes
# that load's result instead of loading again.
# Loads with busybox modprobe.  Counters live in /run/standin/.
set -u
S=/run/standin
mkdir -p "$S"
lock() { while ! mkdir "$1" 2>/dev/null; do usleep 20000; done; }
unlock() { rmdir "$1"; }
bump() { lock "$S/counters.lock"; n=$(cat "$S/$1" 2>/dev/null || echo 0); echo $((n + 1)) >"$S/$1"; unlock "$S/counters.lock"; }
cnt() { cat "$S/$1" 2>/dev/null || echo 0; }

[ "${1:-}" = --socket ] && shift 2
cmd=${1:-}; shift || true
case $cmd in
status)
	if [ "${1:-}" = --json ]; then
		echo "{\"requests\": $(cnt requests), \"merged\": $(cnt merged), \"load_calls\": $(cnt load_calls), \"failures\": $(cnt failures), \"in_flight\": 0}"
	else
		echo "requests $(cnt requests) merged $(cnt merged) load_calls $(cnt load_calls) failures $(cnt failures) in_flight 0"
	fi
	exit 0 ;;
load) ;;
*) echo "standin: unsupported command $cmd" >&2; exit 2 ;;
esac
fallback=1
while [ $# -gt 0 ]; do
	case $1 in
	--no-fallback) fallback=0; shift ;;
	--*) shift ;;
	*) break ;;
	esac
done
target=$1; shift
if ! kill -0 "$(cat /run/standin.pid 2>/dev/null)" 2>/dev/null; then
	if [ "$fallback" = 0 ]; then
		echo "modbroker: $target: failed: daemon unreachable and --no-fallback given" >&2; exit 1
	fi
	echo "modbroker: daemon unreachable (stand-in), loading $target directly" >&2
	modprobe "$target" "$@" && { echo "$target: loaded"; exit 0; }
	exit 1
fi
bump requests
# Resolve to a module name (alias or name) the way busybox modprobe would.
name=$(echo "$target" | tr - _)
key=$(echo "$name" | tr -c 'a-zA-Z0-9_\n' '_')
gen0=$(cat "$S/$key.gen" 2>/dev/null || echo 0)
lock "$S/$key.lock"
gen=$(cat "$S/$key.gen" 2>/dev/null || echo 0)
if [ "$gen" != "$gen0" ]; then
	bump merged
	rc=$(cat "$S/$key.rc")
else
	if grep -q "^$name " /proc/modules; then
		rc=already
	else
		bump load_calls
		if modprobe "$target" "$@" 2>"$S/$key.err"; then rc=0; else rc=1; fi
	fi
	echo "$rc" >"$S/$key.rc"; cp "$S/$key.err" "$S/$key.lasterr" 2>/dev/null
	echo $((gen + 1)) >"$S/$key.gen"
fi
unlock "$S/$key.lock"
case $rc in
0) echo "$target: loaded" ;;
already) echo "$target: already-loaded" ;;
*)
	bump failures
	if grep -q 'No such device' "$S/$key.lasterr" 2>/dev/null; then
		echo "$target: failed"
		echo "modbroker: $target: failed: module $name: ENODEV (errno 19)" >&2
	elif grep -q 'not found' "$S/$key.lasterr" 2>/dev/null; then
		echo "$target: no-match"; exit 0
	else
		echo "$target: failed"
		echo "modbroker: $target: failed: $(cat "$S/$key.lasterr")" >&2
	fi
	exit 1 ;;
esac
