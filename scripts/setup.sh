#!/usr/bin/env bash
# setup.sh — prepare a Debian or Ubuntu host for doppel and build it.
# Safe to run twice. Run as root: installs missing Debian packages, a working
# CRIU (scripts/get-criu.sh), and builds bin/doppel.
#
# Usage: sudo scripts/setup.sh [--test]   (--test also installs what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup: $*" >&2; exit 1; }
say() { echo "setup: $*"; }

WITH_TEST=0
for a in "$@"; do
	case "$a" in
	--test) WITH_TEST=1 ;;
	-h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown option $a (see --help)" ;;
	esac
done

[ "$(id -u)" = 0 ] || die "must run as root (try: sudo $0)"

# Go: the version go.mod names. The go command fetches a newer toolchain
# through the module proxy by itself when the local one is older.
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || die "no go command: install Go 1.26 or newer (https://go.dev/doc/install) and put it on PATH"
say "$(go version)"

# Debian packages, only those missing.
need=(ca-certificates debian-archive-keyring iproute2)
[ "$WITH_TEST" = 1 ] && need+=(tmux)
missing=()
for p in "${need[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	say "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scripts/get-criu.sh

say "building bin/doppel"
mkdir -p bin
go build -o bin/doppel .
say "done: bin/doppel $(bin/doppel version | cut -d' ' -f2-)"
