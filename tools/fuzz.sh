#!/bin/bash
# fuzz.sh [SECONDS] - build the cargo-fuzz targets in fuzz/ and run each for SECONDS (default 60)
# from the seed corpus in fuzz/corpus/TARGET. Used by `make fuzz` (and so by `make test`).
#
# Installs cargo-fuzz (CARGO_FUZZ_VERSION, with --locked) if `cargo fuzz` is missing; it goes
# where `cargo install` puts it ($CARGO_INSTALL_ROOT, else $CARGO_HOME, else ~/.cargo).
# The committed corpus is copied to a scratch directory, so a run never changes the repository;
# inputs found are dropped with it. A crash, leak, timeout or failed property stops that target,
# leaves the input in fuzz/artifacts/TARGET/ and makes the script exit non-zero after the other
# targets have run. Turn such an input into a regression test (tests/fuzz_regressions.rs) and
# fix the cause; `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...` replays it.
#
# Environment: FUZZ_TARGETS (default: all), FUZZ_SANITIZER (address; `none` builds without ASan,
# faster but blind to memory errors in C dependencies), CARGO_FUZZ_VERSION.
set -eu
cd "$(dirname "$0")/.."

seconds=${1:-60}
targets=${FUZZ_TARGETS:-"decode_request validate_target install_request"}
sanitizer=${FUZZ_SANITIZER:-address}
cargo_fuzz_version=${CARGO_FUZZ_VERSION:-0.13.2}

# cargo-fuzz passes rustc one nightly-only flag, -Zsanitizer=address (its coverage flags,
# -Cpasses=sancov-module and -Cllvm-args=-sanitizer-coverage-*, are stable). CI has only the stable toolchain and cannot fetch a nightly, so RUSTC_BOOTSTRAP=1
# lets stable accept the -Z flag. It is set for this script's fuzz build only: the shipped
# binaries and every other test build without it. Stable ships the sanitizer runtimes
# (librustc-stable_rt.asan.a), so AddressSanitizer links and runs as it does on nightly.
export RUSTC_BOOTSTRAP=1

install_root=${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}
export PATH="$install_root/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz: installing cargo-fuzz $cargo_fuzz_version into $install_root"
	cargo install cargo-fuzz --locked --version "$cargo_fuzz_version" --root "$install_root"
fi
echo "fuzz: $(cargo fuzz --version), $(rustc --version), sanitizer $sanitizer, ${seconds}s per target"

# Release build with debug assertions (overflow checks included) and the chosen sanitizer.
flags=(--debug-assertions --sanitizer "$sanitizer")
cargo fuzz build "${flags[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=
for target in $targets; do
	corpus="$scratch/$target"
	mkdir -p "$corpus" "fuzz/artifacts/$target"
	cp -R "fuzz/corpus/$target/." "$corpus/"
	libfuzzer_args=(-max_total_time="$seconds" -timeout=10 -print_final_stats=1)
	if [ -f "fuzz/dicts/$target.dict" ]; then
		libfuzzer_args+=(-dict="fuzz/dicts/$target.dict")
	fi
	echo "fuzz: $target for ${seconds}s from $(find "$corpus" -type f | wc -l) seeds"
	if cargo fuzz run "${flags[@]}" "$target" "$corpus" -- "${libfuzzer_args[@]}"; then
		echo "fuzz: $target: no crash; corpus grew to $(find "$corpus" -type f | wc -l) inputs"
	else
		echo "fuzz: $target FAILED; input kept in fuzz/artifacts/$target/" >&2
		failed="$failed $target"
	fi
done

if [ -n "$failed" ]; then
	echo "fuzz: failures in:$failed" >&2
	exit 1
fi
echo "fuzz: all targets ran ${seconds}s without a crash"
