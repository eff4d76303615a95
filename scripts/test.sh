#!/usr/bin/env bash
# The project's single test command; CI runs it through .ci/run.
#
#   scripts/test.sh [pytest args...]
#
# 1. installs the system packages the tests need (only when missing),
# 2. makes the virtual environment .venv (scripts/venv.sh: Python >= 3.11, python3-venv from
#    apt-get if 'python3 -m venv' fails) and installs the package with its test extra into it
#    (pip, editable); an existing .venv made from the same pyproject.toml is reused as it is,
#    then prepares git's own test suite for tests/mount/test_mount_git.py (scripts/git_t.sh, cached),
# 3. runs ruff and mypy with the venv's python,
# 4. runs pytest inside a private D-Bus session with a real Secret Service
#    (gnome-keyring), so keyring tests use the real thing; such tests see
#    CLOUDGUARD_TEST_KEYRING=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh

log() { printf '==> %s\n' "$*" >&2; }

# --- 1. system packages ------------------------------------------------------
# dbus-run-session is in dbus-daemon on Debian 12; gnome-keyring pulls in a
# session bus itself. fuse3 gives /dev/fuse users fusermount3. fusefat and
# dosfstools give a real FAT file system over an image (case-insensitive folder
# tests; no loop device needed). vim, git and rsync: the daemon's save-pattern tests.
# No dbus-x11.
missing=()
command -v dbus-run-session >/dev/null 2>&1 || missing+=(dbus-daemon)
command -v gnome-keyring-daemon >/dev/null 2>&1 || missing+=(gnome-keyring)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v fusefat >/dev/null 2>&1 || missing+=(fusefat)
command -v mkfs.vfat >/dev/null 2>&1 || missing+=(dosfstools)
# the daemon's save-pattern tests run the real editors and tools users have
command -v vim >/dev/null 2>&1 || missing+=(vim)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
# git's own t/ scripts on the mount (tests/mount/test_mount_git.py): scripts/git_t.sh builds their
# helpers from git's source package
command -v make >/dev/null 2>&1 || missing+=(make)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)

if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    apt_install() {
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
            gnome-keyring dbus-daemon fuse3 fusefat dosfstools ca-certificates vim git rsync \
            make gcc libc6-dev zlib1g-dev xz-utils >/dev/null
    }
    # Update the package lists only if there are none, or if installing fails.
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        "${sudo[@]}" apt-get update -qq
    fi
    if ! apt_install; then
        "${sudo[@]}" apt-get update -qq
        apt_install
    fi
fi

# --- 2. Python packages, in .venv ---------------------------------------------
# A stock Debian python3 refuses 'pip install' outside a venv (PEP 668). ensure_venv also puts
# .venv/bin first on PATH: tests that spawn python3, rclone or cloudguard get the venv's.
ensure_venv .venv test
py="$VENV_PYTHON"

# --- 2b. git's own test suite, for tests/mount/test_mount_git.py ----------
# scripts/git_t.sh fetches git's source package and builds the helpers its t/ scripts need
# (cached under ~/.cache; about 25 s cold on 2 cores). Under CI=true a failure here fails the
# run (and those tests are marked fuse: a skip there fails too); elsewhere they skip.
if [ -z "${CLOUDGUARD_GIT_T:-}" ]; then
    log "git's test suite (scripts/git_t.sh)"
    if git_t="$(scripts/git_t.sh)"; then
        export CLOUDGUARD_GIT_T="$git_t"
    elif [ "${CI:-}" = true ]; then
        exit 1
    else
        log "scripts/git_t.sh failed: tests/mount/test_mount_git.py will be skipped"
    fi
fi

# --- 3. static checks --------------------------------------------------------
log "ruff check"
"$py" -m ruff check cloudguard tests scripts
log "mypy"
"$py" -m mypy

# --- 4. pytest inside a real Secret Service ----------------------------------
keyring_home="$(mktemp -d "${TMPDIR:-/tmp}/cloudguard-keyring.XXXXXX")"
trap 'rm -rf "$keyring_home"' EXIT

log "pytest (in dbus-run-session with gnome-keyring)"
# shellcheck disable=SC2016  # expanded by the inner shell
dbus-run-session -- sh -c '
    set -eu
    export XDG_DATA_HOME="$1"
    py="$2"
    shift 2
    # --unlock with a password on stdin creates and unlocks the login
    # keyring; without it, creating items fails with "Prompt dismissed".
    eval "$(printf "%s" cloudguard-test |
        gnome-keyring-daemon --unlock --daemonize --components=secrets)"
    export GNOME_KEYRING_CONTROL
    "$py" - <<"EOF"
import sys, keyring
from keyring.backends import SecretService
kr = keyring.get_keyring()
if not isinstance(kr, SecretService.Keyring):
    sys.exit(f"Secret Service not in use: keyring chose {kr!r}")
keyring.set_password("cloudguard-selftest", "u", "v")
if keyring.get_password("cloudguard-selftest", "u") != "v":
    sys.exit("Secret Service did not round-trip a secret")
keyring.delete_password("cloudguard-selftest", "u")
EOF
    export CLOUDGUARD_TEST_KEYRING=1
    exec "$py" -m pytest "$@"
' sh "$keyring_home" "$py" "$@"
