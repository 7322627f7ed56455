#!/usr/bin/env bash
# get-criu.sh — make a working CRIU (4.2 or newer) available to doppel.
#
# Idempotent; run as root. If `criu` on PATH is >= 4.2 and `criu check`
# passes, that one is used. Otherwise Debian's CRIU from the unstable suite is
# installed into a private prefix with the libraries it needs and its own
# dynamic loader, plus a wrapper PREFIX/bin/criu. The host's apt
# configuration is not changed: packages are fetched with `apt-get download`
# through a temporary sources list and state directory.
#
# Usage: scripts/get-criu.sh [--prefix DIR] [--mirror URI] [--suite SUITE] [--force]
#   --prefix  install prefix (default /usr/local/lib/doppel/criu, env DOPPEL_CRIU_PREFIX)
#   --mirror  Debian mirror URI (default: taken from this host's apt sources,
#             env DOPPEL_CRIU_MIRROR)
#   --suite   Debian suite to take CRIU from (default unstable)
#   --force   reinstall even if a working CRIU is present
set -euo pipefail

PREFIX=${DOPPEL_CRIU_PREFIX:-/usr/local/lib/doppel/criu}
MIRROR=${DOPPEL_CRIU_MIRROR:-}
SUITE=unstable
FORCE=0
MIN_MAJOR=4
MIN_MINOR=2

die() { echo "get-criu: $*" >&2; exit 1; }
say() { echo "get-criu: $*"; }

while [ $# -gt 0 ]; do
	case "$1" in
	--prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
	--mirror) MIRROR=${2:?--mirror needs a URI}; shift 2 ;;
	--suite) SUITE=${2:?--suite needs a name}; shift 2 ;;
	--force) FORCE=1; shift ;;
	-h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
done

[ "$(id -u)" = 0 ] || die "must run as root (try: sudo $0)"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported, this is $(uname -m)"

# usable BIN: prints the version and succeeds when BIN is >= MIN and passes check.
usable() {
	local bin=$1 ver major minor
	[ -x "$bin" ] || return 1
	ver=$("$bin" --version 2>/dev/null | sed -n 's/^Version: *//p') || return 1
	[ -n "$ver" ] || return 1
	major=${ver%%.*}; minor=${ver#*.}; minor=${minor%%.*}
	if [ "$major" -lt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -lt "$MIN_MINOR" ]; }; then
		say "$bin is CRIU $ver, older than $MIN_MAJOR.$MIN_MINOR"
		return 1
	fi
	if ! "$bin" check >/dev/null 2>&1; then
		say "$bin (CRIU $ver): 'criu check' fails on this host"
		return 1
	fi
	echo "$ver"
}

if [ "$FORCE" = 0 ]; then
	if sys=$(command -v criu) && ver=$(usable "$sys" | tail -n1) && [ -n "$ver" ]; then
		say "using $sys (CRIU $ver, criu check passes)"
		exit 0
	fi
	if ver=$(usable "$PREFIX/bin/criu" | tail -n1) && [ -n "$ver" ]; then
		say "already installed: $PREFIX/bin/criu (CRIU $ver, criu check passes)"
		exit 0
	fi
fi

for tool in apt-get apt-cache dpkg-deb; do
	command -v "$tool" >/dev/null || die "$tool not found: this script needs a Debian or Ubuntu host"
done

# The mirror comes from this host's own apt sources unless given.
if [ -z "$MIRROR" ]; then
	MIRROR=$( { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
		awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) { print $i; exit } }')
fi
if [ -z "$MIRROR" ]; then
	MIRROR=$( { cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
		awk 'tolower($1)=="uris:" { for (i=2;i<=NF;i++) if ($i !~ /security/) { print $i; exit } }')
fi
[ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt sources; pass --mirror URI or set DOPPEL_CRIU_MIRROR"
case "$MIRROR" in *security*) die "mirror $MIRROR is a security archive; pass --mirror with a main Debian mirror" ;; esac
MIRROR=${MIRROR%/}

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$KEYRING" ] || die "$KEYRING missing: apt-get install debian-archive-keyring"

WORK=$(mktemp -d /tmp/doppel-get-criu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs" "$WORK/root"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$WORK/sources.list"
APT_OPTS=(
	-o "Dir::Etc::SourceList=$WORK/sources.list"
	-o "Dir::Etc::SourceParts=$WORK/none"
	-o "Dir::State::Lists=$WORK/lists"
	-o "Dir::Cache=$WORK/cache"
	-o "Dir::State::Status=/dev/null"
	-o "APT::Sandbox::User=root"
	-o "Debug::NoLocking=1"
)

say "reading the $SUITE package index from $MIRROR"
apt-get -qq "${APT_OPTS[@]}" update || die "apt-get update from $MIRROR $SUITE failed (check --mirror and the network)"

candidate=$(apt-cache "${APT_OPTS[@]}" policy criu | awk '/Candidate:/ {print $2}')
[ -n "$candidate" ] && [ "$candidate" != "(none)" ] || die "no criu package in $SUITE at $MIRROR"
say "CRIU package $candidate"

# The whole run-time closure of criu, as if nothing were installed, so the
# private prefix does not depend on the host's (older) libc.
mapfile -t pkgs < <(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
	--no-conflicts --no-breaks --no-replaces --no-enhances criu |
	grep -v '^ ' | grep -v '[<>]' | sort -u)
[ "${#pkgs[@]}" -gt 0 ] || die "could not resolve the dependencies of criu"
# Only criu and shared libraries are needed; maintainer tooling is not.
keep=()
for p in "${pkgs[@]}"; do
	case "$p" in
	criu|lib*|gcc-*-base) keep+=("$p") ;;
	esac
done

say "downloading ${#keep[@]} packages"
(cd "$WORK/debs" && apt-get -qq "${APT_OPTS[@]}" download "${keep[@]}") ||
	die "apt-get download failed for: ${keep[*]}"
for deb in "$WORK"/debs/*.deb; do
	dpkg-deb -x "$deb" "$WORK/root"
done

[ -x "$WORK/root/usr/sbin/criu" ] || die "the criu package holds no usr/sbin/criu"
libdir="$WORK/root/usr/lib/x86_64-linux-gnu"
[ -e "$libdir/ld-linux-x86-64.so.2" ] || die "no dynamic loader in the downloaded libc"

# Build the new prefix beside the old one and swap it in, so a failure leaves
# a previous install untouched.
stage="$PREFIX.new.$$"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib" "$stage/libexec"
cp -a "$libdir"/. "$stage/lib/"
for d in "$WORK/root/lib/x86_64-linux-gnu" "$WORK/root/usr/lib"; do
	[ -d "$d" ] && find "$d" -maxdepth 1 -name '*.so*' -exec cp -a {} "$stage/lib/" \;
done
cp "$WORK/root/usr/sbin/criu" "$stage/libexec/criu"
cat >"$stage/bin/criu" <<EOF
#!/bin/sh
# CRIU $candidate from Debian $SUITE, run with its own loader and libraries
# (installed by doppel's scripts/get-criu.sh).
exec "$PREFIX/lib/ld-linux-x86-64.so.2" --library-path "$PREFIX/lib" "$PREFIX/libexec/criu" "\$@"
EOF
chmod 0755 "$stage/bin/criu"
echo "$candidate" >"$stage/VERSION"

old="$PREFIX.old.$$"
mkdir -p "$(dirname "$PREFIX")"
[ -e "$PREFIX" ] && mv "$PREFIX" "$old"
mv "$stage" "$PREFIX"
if ! ver=$(usable "$PREFIX/bin/criu" | tail -n1) || [ -z "$ver" ]; then
	out=$("$PREFIX/bin/criu" check 2>&1 | tail -n 5 || true)
	rm -rf "$PREFIX"
	[ -e "$old" ] && mv "$old" "$PREFIX"
	die "installed CRIU does not pass 'criu check' on this host: $out"
fi
rm -rf "$old"
say "installed $PREFIX/bin/criu: CRIU $ver, criu check passes"
