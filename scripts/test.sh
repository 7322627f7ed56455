#!/usr/bin/env bash
# test.sh — set up everything the tests need, then run them all.
# Run as root on a Debian or Ubuntu host: the CRIU tests checkpoint and
# restore real processes. Extra arguments go to `go test` (e.g. -short, -run X).
#
# Usage: sudo scripts/test.sh [go test flags]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

scripts/setup.sh --test

echo "test: go vet ./..."
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
[ -z "$unformatted" ] || { echo "test: gofmt would change: $unformatted" >&2; exit 1; }

log=$(mktemp /tmp/doppel-test.XXXXXX)
kept=/tmp/doppel-test-failed.log # the whole log, kept when a test fails
trap 'rm -f "$log"' EXIT
echo "test: go test ./... $*"
set +e
go test -count=1 -timeout 40m -v "$@" ./... 2>&1 | tee "$log" | grep -E '^(=== RUN|--- (PASS|FAIL|SKIP)|PASS|FAIL|ok|panic|\s+---)' | grep -v '^=== RUN'
rc=${PIPESTATUS[0]}
set -e

# Fuzz targets, each for a bounded time (the seed corpus runs in go test).
if [ "$rc" = 0 ] && [ "${DOPPEL_FUZZTIME:-20s}" != 0 ]; then
	while read -r pkg target; do
		echo "test: fuzz $pkg $target for ${DOPPEL_FUZZTIME:-20s}"
		go test -run '^$' -fuzz "^$target\$" -fuzztime "${DOPPEL_FUZZTIME:-20s}" "$pkg" || rc=1
	done < <(grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
		for t in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | cut -d' ' -f2); do
			echo "./$(dirname "${f#./}") $t"
		done
	done)
fi

if [ "$rc" != 0 ]; then
	echo "test: output of the failures (the whole log: $kept)"
	cp "$log" "$kept"
	# A failed test's lines come between its "=== RUN" and its "--- FAIL"
	# line: first its own messages (file_test.go:N: ..., with the lines
	# they continue on), then its last lines.
	for name in $(grep -oE '^\s*--- FAIL: [^ ]+' "$log" | awk '{print $3}' | sort -u); do
		awk -v n="$name" '
			$0 ~ "^=== (RUN|CONT|PAUSE)[ \t]+" n "$" { buf = ""; on = 1; next }
			$0 ~ "^[ \t]*--- FAIL: " n " " { if (on) printf "%s", buf; on = 0; exit }
			on { buf = buf $0 "\n" }
		' "$log" >"$log.one"
		echo "test: --- $name: its messages"
		awk '/^    [A-Za-z0-9_]+\.go:[0-9]+: / { left = 6 } left > 0 { print; left-- }' "$log.one" | head -n 80
		echo "test: --- $name: its last lines"
		tail -n 40 "$log.one"
	done
	rm -f "$log.one"
	grep -A40 -E '^panic:' "$log" | head -80 || true
	grep -E '^FAIL\s' "$log" || true
fi
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
if [ "$skipped" -gt 0 ]; then
	echo "test: skipped:"
	grep -A1 -E '^\s*--- SKIP' "$log" | grep -vE '^(--|\s*--- SKIP)' | sed 's/^/  /' | head -40
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$rc"
