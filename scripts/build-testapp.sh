#!/usr/bin/env bash
# Builds hangar-testapp as a static executable (no shared libraries, so it runs in a
# `FROM scratch` image) and prints its path as the only line on stdout.
#
#   scripts/build-testapp.sh            # -> <target dir>/testapp/hangar-testapp
#
# Honours CARGO_TARGET_DIR. Cargo's own output goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

# `cargo rustc` passes the flag to the final binary only, so build scripts and proc macros
# keep linking dynamically; with glibc, crt-static links libc itself into the binary
# (the app does no name lookups, which static glibc cannot do).
cargo rustc --manifest-path "$root/Cargo.toml" -p hangar-testapp --bin hangar-testapp \
    --release -- -C target-feature=+crt-static >&2

built="$target_dir/release/hangar-testapp"
out_dir="$target_dir/testapp"
mkdir -p "$out_dir"
# A separate copy, so a later ordinary (dynamic) release build cannot replace it.
cp -f "$built" "$out_dir/hangar-testapp.tmp"
mv -f "$out_dir/hangar-testapp.tmp" "$out_dir/hangar-testapp"

# `ldd` exits non-zero and says "not a dynamic executable" for a static binary (some
# versions say "statically linked"); anything else means the build is not static.
if ldd_out="$(ldd "$out_dir/hangar-testapp" 2>&1)" \
    && ! grep -q "statically linked" <<<"$ldd_out"; then
    echo "build-testapp: $out_dir/hangar-testapp is not static:" >&2
    echo "$ldd_out" >&2
    exit 1
fi
echo "$out_dir/hangar-testapp"
