#!/usr/bin/env bash
# Run scripts/bench.py as a workstation user would: device keys in a real Secret Service
# (gnome-keyring under its own D-Bus session), not the headless passphrase file. Uses the
# .venv that scripts/test.sh makes, if there is one (a stock Debian python3 has no packages).
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
exec dbus-run-session -- bash -c '
  py="$1"; shift
  export XDG_DATA_HOME=$(mktemp -d)
  eval "$(printf bench | gnome-keyring-daemon --unlock --daemonize --components=secrets)"
  export CLOUDGUARD_BENCH_KEYSTORE=keyring
  "$py" scripts/bench.py "$@"' bench "$py" "$@"
