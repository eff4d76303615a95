#!/usr/bin/env bash
# Prepare git's own test suite (t/) for tests/mount/test_mount_git.py (issue 12: "a few of git's own
# t/ scripts run with --root on the mount"), and print the folder to put in CLOUDGUARD_GIT_T.
#
# The suite is not in any binary package: this fetches Debian's source package of the git that
# is installed (apt-get source, through a private source list, so the machine's apt setup is
# not touched), then builds what t/test-lib.sh needs beside an installed git
# (GIT_TEST_INSTALLED): t/helper/test-tool, GIT-BUILD-OPTIONS and the templates. Needs
# make, a C compiler and zlib's headers (Debian: make gcc libc6-dev zlib1g-dev); about
# 8 MB of download and 25 s of build on 2 cores (-O0: the helpers' speed does not matter;
# 50 s with git's default -O2). Cached: a second run prints at once. scripts/test.sh runs it.
#
#   export CLOUDGUARD_GIT_T="$(scripts/git_t.sh)"
#   .venv/bin/pytest tests/mount/test_mount_git.py
set -euo pipefail

cache="${CLOUDGUARD_GIT_T_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cloudguard-git-t}"
version="$(dpkg-query -W -f='${Version}' git)"  # e.g. 1:2.39.5-0+deb12u3
upstream="${version#*:}"
upstream="${upstream%%-*}"
tree="$cache/git-$upstream"
if [ -x "$tree/t/helper/test-tool" ] && [ -d "$tree/templates/blt" ]; then
    echo "$tree"
    exit 0
fi
for tool in make cc; do
    command -v "$tool" >/dev/null || { echo "git_t.sh: needs $tool" >&2; exit 2; }
done
[ -f /usr/include/zlib.h ] || { echo "git_t.sh: needs zlib's headers (zlib1g-dev)" >&2; exit 2; }

. /etc/os-release
mkdir -p "$cache/apt/parts" "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial"
cat > "$cache/apt/parts/src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME $VERSION_CODENAME-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://security.debian.org/debian-security
Suites: $VERSION_CODENAME-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$cache/apt/parts"
          -o "Dir::State::Lists=$cache/apt/lists" -o "Dir::Cache=$cache/apt/cache")
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$cache" && apt-get "${apt_opts[@]}" source --download-only "git=$version" >&2)
rm -rf "$tree"
tar -C "$cache" -xf "$cache/git_$upstream.orig.tar.xz"
make -C "$tree" -j"$(nproc)" CFLAGS="-O0 -g0" NO_CURL=1 NO_EXPAT=1 NO_GETTEXT=1 NO_TCLTK=1 NO_PERL=1 \
    NO_PYTHON=1 NO_OPENSSL=1 t/helper/test-tool GIT-BUILD-OPTIONS >&2
make -C "$tree/templates" NO_PERL=1 >&2
echo "$tree"
