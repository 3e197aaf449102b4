#!/usr/bin/env bash
# The project's checks, as CI runs them: style, lints, supply chain, then every test.
# Run as root: the runtime, network and whole-system tests create real containers,
# mounts and network namespaces (and clean them up).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --dev

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo deny check bans licenses sources"
cargo deny --log-level error check bans licenses sources
echo "==> build the test app and the hangar binary"
./scripts/build-testapp.sh >/dev/null
echo "==> tests"
cargo nextest run --workspace --locked --no-fail-fast
