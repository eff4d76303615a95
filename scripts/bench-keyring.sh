#!/usr/bin/env bash
# Run scripts/bench.py as a workstation user would: device keys in a real Secret Service
# (gnome-keyring under its own D-Bus session), not the headless passphrase file.
set -euo pipefail
cd "$(dirname "$0")/.."
exec dbus-run-session -- bash -c '
  export XDG_DATA_HOME=$(mktemp -d)
  eval "$(printf bench | gnome-keyring-daemon --unlock --daemonize --components=secrets)"
  export CLOUDGUARD_BENCH_KEYSTORE=keyring
  python3 scripts/bench.py "$@"' bench "$@"
