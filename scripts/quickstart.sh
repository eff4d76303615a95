#!/usr/bin/env bash
# The main job on an embedded default: a local folder stands in for the cloud, and the device
# key lives in a passphrase-protected file. Installs cloudguard, makes a demo vault, pushes
# sample documents, shows what the "cloud" holds, and pulls them into a second folder.
#
#   scripts/quickstart.sh [--keep]
#
# cloudguard goes into the virtual environment .venv at the repo root (scripts/venv.sh; a stock
# Debian python3 refuses 'pip install' outside one). The demo runs in a fresh folder under
# /tmp, removed at the end unless --keep is given; either way the last line says which.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh

keep=0
case "${1:-}" in
    --keep) keep=1 ;;
    "") ;;
    *) echo "usage: scripts/quickstart.sh [--keep]" >&2; exit 2 ;;
esac

ensure_venv .venv
py="$VENV_PYTHON"  # .venv/bin is first on PATH now: cloudguard and rclone are the venv's

demo=$(mktemp -d "${TMPDIR:-/tmp}/cloudguard-demo.XXXXXX")
finish() {
    if [ "$keep" = 1 ]; then
        echo "== the demo is in $demo (remove it with: rm -rf $demo)"
    else
        rm -rf "$demo"
        echo "== removed the demo folder $demo (scripts/quickstart.sh --keep keeps it)"
    fi
}
trap finish EXIT
export CLOUDGUARD_HOME="$demo/home"            # local state of this demo only
export CLOUDGUARD_KEYSTORE=file                # passphrase-protected key file, no OS keyring
# A chosen passphrase must pass the strength check (cloudguard key passphrase prints one). The
# device key file and the recovery kit each have their own (README, user guide).
export CLOUDGUARD_PASSPHRASE="${CLOUDGUARD_PASSPHRASE:-demo only: quarry lantern vivid cobalt}"
export CLOUDGUARD_KIT_PASSPHRASE="${CLOUDGUARD_KIT_PASSPHRASE:-demo kit: harbor thimble orchid gravel}"
export RCLONE_CONFIG=/dev/null

docs="$demo/documents"
cloud="$demo/cloud"
mkdir -p "$docs/minutes/2026" "$docs/empty folder"
printf 'Meeting minutes: budget approved.\n' > "$docs/minutes/2026/board-meeting.txt"
printf 'Strategy draft, do not share.\n' > "$docs/strategy \$(rm -rf ~).docx"
head -c 300000 /dev/urandom > "$docs/scan.pdf"

echo "== cloudguard init: a vault in $cloud for $docs"
cloudguard init "$docs" --remote "$cloud" --name demo-laptop
echo "== cloudguard push"
cloudguard push --folder "$docs" --json | "$py" -c '
import json, sys
r = json.load(sys.stdin)
print("uploaded", len(r["uploaded"]), "files in", r["objects"], "objects,", r["bytes_uploaded"], "bytes")'

echo "== what the cloud holds (random names, ciphertext only):"
find "$cloud" -type f | sed "s|$cloud/||" | sort
if grep -rq "budget approved" "$cloud"; then echo "PLAINTEXT LEAKED" >&2; exit 1; fi
echo "   (no file name, folder name or content of the documents appears above)"

echo "== a recovery kit, then a second device clones the vault with it"
# Without --choose-passphrase the kit gets a generated passphrase, shown once; the demo chooses
# CLOUDGUARD_KIT_PASSPHRASE so that the clone below can read the kit unattended.
cloudguard key export "$demo/recovery-kit.json" --folder "$docs" --choose-passphrase
cloudguard clone "$cloud" "$demo/second-device" --key-file "$demo/recovery-kit.json" \
  --name demo-desktop
# .cloudguard is each folder's own marker (never synced), so it differs between the two
diff -r --exclude=.cloudguard "$docs" "$demo/second-device" &&
  echo "== the second device holds identical documents"
cloudguard verify --read-data --folder "$demo/second-device"
echo "== done"
