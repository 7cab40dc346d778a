#!/usr/bin/env sh
# Sets up a fresh Debian machine that has Rust, then runs the quickstart recipe:
#   ./quickstart.sh
# Installs Debian's Fashion-MNIST package (IDX files under /usr/share/datasets/fashion-mnist)
# and the sqlite3 CLI, builds rkd-orch in release mode and runs recipes/quickstart.yaml.
# Extra arguments go to `rkd-orch run` (e.g. --runs-dir DIR, --jobs 2).
set -eu
cd "$(dirname "$0")"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! dpkg -s dataset-fashion-mnist sqlite3 >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist sqlite3
fi
cargo build --release --quiet
exec ./target/release/rkd-orch run recipes/quickstart.yaml "$@"
