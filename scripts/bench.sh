#!/usr/bin/env bash
# bench.sh — doppel's benchmarks, each against its baseline, as one table.
# Run as root with CRIU 4.2+ (scripts/setup.sh). Each scenario alternates
# doppel and its baseline over several rounds and reports medians. The
# table goes to stdout and, with the date, the machine (CPUs, memory,
# kernel, CPU model, load average) and the doppel commit, to a file.
#
# Usage: sudo scripts/bench.sh [--quick] [--rounds N] [--only LIST] [--out FILE] [--keep]
#   --quick   small sizes, one round, under 3 minutes on 2 cores: a smoke
#             check that every scenario produces a number (exit 1 if not);
#             writes no file unless --out is given
#   --rounds  rounds per scenario (default 5; 1 with --quick)
#   --only    the scenarios to run, comma-separated (freeze, incr, capture,
#             relocate, failover, throughput): the table has their rows
#             only, and no file is written unless --out is given
#   --out     the report file (default BENCHMARKS.md in the repository)
#   --keep    keep the temporary directory (state, logs) for inspection
#   --failover-from chaos|cluster
#             where the failover time comes from: the failover/chaos
#             benchmark (default when it exists) or this script's cluster
#
# Scenarios (doppel vs baseline, goal):
#   freeze     full checkpoint of a 1 GiB app: the app stopped, vs a bare
#              `criu dump --leave-running` to tmpfs (<= 1.10)
#   incr       bytes an epoch adds with 1% of the pages dirtied, vs a full
#              epoch (<= 0.03)
#   capture    "checkpoint now" to a committed epoch of 1 GiB of new
#              memory, vs the bare dump's time (<= 2.5)
#   relocate   `doppel relocate` pause of a 256 MiB app dirtying 1% of its
#              pages per second over a link capped at 1 Gbit/s, vs a naive
#              stop-and-copy (full dump, capped transfer, restore) (<= 0.35)
#   failover   kill -9 of the OP node's daemon and app to the first request
#              served by the new OP, vs CRIU alone restoring the same app on
#              its node from a dump taken just before the kill (`doppel
#              bench raw-restore`: kill -9, criu restore, first served
#              request); goal: doppel's median <= 2 s
#   throughput app requests/s under checkpoints every 1 s and 5 s, vs the
#              same app unmanaged (reported)
# The full run takes the first three from BenchmarkEngine1GiB (replicate/),
# --quick from `doppel bench --baseline` on a 64 MiB app. Clusters run on
# 127.77.X.1-3 with state in a temporary directory; everything started is
# stopped, and the directory removed, on exit, error or Ctrl-C.

# The benchmark runs in a session of its own, a child of this shell, which
# turns Ctrl-C (or a SIGINT or SIGTERM sent to this process) into a SIGTERM
# for the benchmark and the command it is running; the benchmark then stops
# everything it started. (A plain trap would not do: bash ignores a Ctrl-C
# that the command it waits for handled and survived, as doppel commands
# do, and it runs a SIGTERM trap only once that command ends.)
if [ -z "${_DOPPEL_BENCH_BODY:-}" ]; then
	_DOPPEL_BENCH_BODY=1 setsid "$BASH" "$0" "$@" &
	body=$!
	trap 'kill -TERM -- "-$body" 2>/dev/null' INT TERM
	rc=0
	while kill -0 "$body" 2>/dev/null; do
		wait "$body"
		rc=$?
	done
	exit "$rc"
fi

set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH=$PATH:/usr/local/go/bin

say() { echo "bench: $*" >&2; }
die() { say "error: $*"; exit 1; }

QUICK=0
ROUNDS=""
OUT=""
KEEP=0
ONLY=""
FAILOVER_FROM=""
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) QUICK=1 ;;
	--rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
	--rounds=*) ROUNDS=${1#*=} ;;
	--out) OUT=${2:?--out needs a file}; shift ;;
	--out=*) OUT=${1#*=} ;;
	--only) ONLY=${2:?--only needs a list of scenarios}; shift ;;
	--only=*) ONLY=${1#*=} ;;
	--keep) KEEP=1 ;;
	--failover-from) FAILOVER_FROM=${2:?--failover-from needs chaos or cluster}; shift ;;
	--failover-from=*) FAILOVER_FROM=${1#*=} ;;
	-h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
case "$ROUNDS" in "") ROUNDS=$([ "$QUICK" = 1 ] && echo 1 || echo 5) ;; *[!0-9]*|0) die "--rounds $ROUNDS: want a positive number" ;; esac
for s in ${ONLY//,/ }; do
	case "$s" in freeze|incr|capture|relocate|failover|throughput) ;; *) die "--only $ONLY: unknown scenario $s (want freeze, incr, capture, relocate, failover, throughput)" ;; esac
done
# want SCENARIO: whether this run measures it.
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
[ -n "$OUT" ] || { [ "$QUICK" = 1 ] || [ -n "$ONLY" ] || OUT=$ROOT/BENCHMARKS.md; }
case "$FAILOVER_FROM" in
"") FAILOVER_FROM=cluster; grep -qs '^func BenchmarkFailover' failover/chaos/*_test.go && FAILOVER_FROM=chaos ;;
chaos|cluster) ;;
*) die "--failover-from $FAILOVER_FROM: want chaos or cluster" ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root (try: sudo $0)"
command -v go >/dev/null || die "no go command (scripts/setup.sh installs what is needed)"

# Sizes and durations of the two modes.
if [ "$QUICK" = 1 ]; then
	HOST_SIZE=64MiB      # doppel bench for freeze/incr/capture
	RELOC_SIZE=64MiB
	TP_SIZE=64MiB
	TP_WINDOW=6s         # each throughput measurement
	FO_SIZE=64MiB
else
	HOST_SIZE=256MiB     # the doppel bench section of the report
	RELOC_SIZE=256MiB
	TP_SIZE=256MiB
	TP_WINDOW=15s
	FO_SIZE=64MiB
fi
RATE=125000000 # 1 Gbit/s, the nodes' transfer.rate_limit
PRESET=lan     # the nodes' timing preset: production's (fast flaps on a loaded host)

# Nothing from the caller's environment reaches doppel's configuration.
for v in $(env | sed -n 's/^\(DOPPEL_[A-Z0-9_]*\)=.*/\1/p'); do unset "$v"; done

CRIU=""
for c in /usr/local/lib/doppel/criu/bin/criu "$(command -v criu || true)"; do
	if [ -n "$c" ] && [ -x "$c" ]; then CRIU=$c; break; fi
done
[ -n "$CRIU" ] || die "no CRIU: run scripts/get-criu.sh (or scripts/setup.sh)"

TMP=$(mktemp -d /tmp/doppel-bench.XXXXXX)
# App names carry this run's id: an app's freezer cgroup and work
# directories are named after it machine-wide.
RUN_ID=$(tr 'A-Z' 'a-z' <<<"${TMP##*.}")
declare -A NODE_PID=() NODE_IP=()
NODES=()
PGIDS=()   # process groups started here (helpers, go test)
APPS=()    # apps submitted to the cluster and not removed yet
ALL_APPS=() # every app submitted, for the work directories of killed nodes

# kill_group signals a process group and waits for it to go.
kill_group() {
	local pg=$1 i
	kill -INT -- "-$pg" 2>/dev/null || return 0
	for i in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || return 0; sleep 0.1; done
	kill -TERM -- "-$pg" 2>/dev/null
	for i in $(seq 30); do kill -0 -- "-$pg" 2>/dev/null || return 0; sleep 0.1; done
	kill -KILL -- "-$pg" 2>/dev/null || true
}

# app_cgroups STATE_DIR [APP]: the freezer cgroup directories of a node's
# engine (one parent per state directory, named after its hash), or of one
# app there.
app_cgroups() {
	local h base
	h=$(printf %s "$1" | sha256sum | cut -c1-8)
	for base in /sys/fs/cgroup/freezer/doppel/$h /sys/fs/cgroup/doppel/$h; do
		[ -d "$base" ] || continue
		if [ -n "${2:-}" ]; then
			[ -d "$base/$2" ] && echo "$base/$2"
		else
			echo "$base"
		fi
	done
}

# app_gone STATE_DIR APP: no process of APP in its cgroup on that node.
app_gone() {
	local cg
	for cg in $(app_cgroups "$1" "$2"); do
		[ -z "$(cat "$cg/cgroup.procs" 2>/dev/null)" ] || return 1
	done
}

# kill_app STATE_DIR APP: kill what runs in the app's cgroup on a node.
kill_app() {
	local cg pids
	for cg in $(app_cgroups "$1" "$2"); do
		[ -f "$cg/freezer.state" ] && echo THAWED >"$cg/freezer.state" 2>/dev/null
		[ -f "$cg/cgroup.freeze" ] && echo 0 >"$cg/cgroup.freeze" 2>/dev/null
		pids=$(cat "$cg/cgroup.procs" 2>/dev/null || true)
		[ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
	done
}

# kill_cgroup_leftovers STATE_DIR kills whatever still runs in the cgroups
# of a node's engine and removes them.
kill_cgroup_leftovers() {
	local base cg pids
	for base in $(app_cgroups "$1"); do
		for cg in "$base"/*/; do
			[ -d "$cg" ] || continue
			pids=$(cat "$cg/cgroup.procs" 2>/dev/null || true)
			[ -z "$pids" ] || say "killing leftover processes of $cg: $(echo $pids)"
			kill_app "$1" "$(basename "$cg")"
		done
		for cg in "$base"/*/; do
			[ -d "$cg" ] || continue
			for _ in $(seq 50); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
		done
		rmdir "$base" 2>/dev/null || true
	done
}

cleanup() {
	local rc=$?
	set +e
	trap - EXIT
	trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
	local n a pg alive=""
	for n in "${NODES[@]}"; do
		kill -0 "${NODE_PID[$n]}" 2>/dev/null && { alive=$n; break; }
	done
	if [ -n "$alive" ]; then
		for a in "${APPS[@]}"; do LIMIT=30 DN "$alive" stop "$a" >/dev/null 2>&1; done
	fi
	for pg in "${PGIDS[@]}"; do kill_group "$pg"; done
	for n in "${NODES[@]}"; do kill -TERM "${NODE_PID[$n]}" 2>/dev/null; done
	for n in "${NODES[@]}"; do
		for _ in $(seq 200); do kill -0 "${NODE_PID[$n]}" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "${NODE_PID[$n]}" 2>/dev/null
	done
	for n in "${NODES[@]}"; do kill_cgroup_leftovers "$TMP/$n"; done
	# A node killed in the middle of a checkpoint or restore leaves its
	# work directory on the tmpfs.
	for a in "${ALL_APPS[@]}"; do rm -rf /dev/shm/doppel-dump-"$a"-* /dev/shm/doppel-restore-"$a"-*; done
	if [ "$KEEP" = 1 ]; then say "kept $TMP"; else rm -rf "$TMP"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted: cleaning up"; exit 143' TERM

# bg runs a command in a process group of its own (so that cleanup can
# stop it and all it started) and waits for it; its exit code is returned.
bg() {
	setsid "$@" &
	local pid=$! rc=0 g keep=()
	PGIDS+=("$pid")
	wait "$pid" || rc=$?
	for g in "${PGIDS[@]}"; do [ "$g" = "$pid" ] || keep+=("$g"); done
	PGIDS=("${keep[@]}")
	return "$rc"
}

# last ARGS...: the last argument, "?" for none.
last() { if [ $# -gt 0 ]; then echo "${!#}"; else echo "?"; fi; }

# median of the numbers on stdin (one per line); nothing for none.
median() {
	sort -g | awk 'NF { a[++n] = $1 } END { if (n == 0) exit; if (n % 2) print a[(n + 1) / 2]; else print (a[n / 2] + a[n / 2 + 1]) / 2 }'
}

# metric NAME: the value before NAME on Go benchmark lines on stdin.
metric() { awk -v m="$1" '{ for (i = 2; i <= NF; i++) if ($i == m) print $(i - 1) }'; }

# json_first KEY: the first value of "KEY" in indented JSON on stdin.
json_first() { sed -n 's/^ *"'"$1"'": "\{0,1\}\([^",]*\)"\{0,1\},\{0,1\} *$/\1/p' | head -1; }

# wait_until SECONDS WHAT CMD...: poll CMD until it succeeds.
wait_until() {
	local t=$1 what=$2 end
	shift 2
	end=$((SECONDS + t))
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$end" ] || { say "timed out after ${t}s waiting for $what"; return 1; }
		sleep 0.2
	done
}

# free_port: a TCP port nothing listens on at 127.0.0.1 or the nodes' IPs.
free_port() {
	local p ip busy
	while :; do
		p=$((20000 + RANDOM % 30000)) busy=0
		for ip in 127.0.0.1 "${NODE_IP[@]}"; do
			(exec 3<>"/dev/tcp/$ip/$p") 2>/dev/null && { busy=1; break; }
		done
		[ "$busy" = 0 ] && { echo "$p"; return; }
	done
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------------------
say "building doppel into $TMP"
DOPPEL=$TMP/doppel
go build -o "$DOPPEL" . || die "go build failed"
CFG=$TMP/config.yaml
"$DOPPEL" init --key-file "$TMP/cluster.key" >/dev/null
cat >"$CFG" <<EOF
# written by scripts/bench.sh
node:
  key_file: $TMP/cluster.key
log:
  level: info
criu:
  path: $CRIU
transfer:
  rate_limit: $RATE
EOF
# D and DN run a doppel command (DN against node N's daemon), bounded by
# $LIMIT seconds (default 120) so that a stuck command cannot hang the run.
D() { timeout "${LIMIT:-120}" "$DOPPEL" --config "$CFG" "$@"; }
DN() { local n=$1; shift; timeout "${LIMIT:-120}" "$DOPPEL" --config "$CFG" --socket "$TMP/$n/api.sock" "$@"; }

COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . 2>/dev/null || COMMIT="$COMMIT (working tree with uncommitted changes)"
START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_START=$(load_avg)
MEM=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
MACHINE="$(nproc) CPU(s) ${CPU_MODEL:-unknown}, $MEM memory, kernel $(uname -r), CRIU $("$CRIU" --version 2>/dev/null | sed -n 's/^Version: //p' | head -1)"
say "machine: $MACHINE; load $LOAD_START; doppel $COMMIT"

# Results: ROW_* are "doppel|baseline|ratio" per scenario; NOTES lines.
declare -A ROW=()
NOTES=()
note() { NOTES+=("$*"); say "$*"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) exit; printf "%.3f", a / b }'; }

# --------------------------------------------------------------- checkpoints
SIZE_CKPT=$([ "$QUICK" = 1 ] && echo "$HOST_SIZE" || echo 1GiB)
if want freeze || want incr || want capture; then
if [ "$QUICK" = 1 ]; then
	say "freeze, incremental, capture: doppel bench --size $HOST_SIZE --baseline ($ROUNDS round(s))"
	L=$(load_avg)
	bg "$DOPPEL" --config "$CFG" --state-dir "$TMP/hostbench" bench --size "$HOST_SIZE" --rounds "$ROUNDS" --baseline --json >"$TMP/hostbench.json" 2>"$TMP/hostbench.log" ||
		{ say "doppel bench failed:"; tail -5 "$TMP/hostbench.log" >&2; }
	j=$TMP/hostbench.json
	fr=$(json_first freeze_ms <"$j") bf=$(json_first frozen_ms <"$j")
	ROW[freeze]="$fr|$bf|$(ratio "$fr" "$bf")"
	is=$(json_first incr_stored_bytes <"$j") fs=$(json_first full_stored_bytes <"$j")
	ROW[incr]="$(awk -v b="$is" 'BEGIN { if (b != "") printf "%.2f", b / 1048576 }')|$(awk -v b="$fs" 'BEGIN { if (b != "") printf "%.1f", b / 1048576 }')|$(ratio "$is" "$fs")"
	cp=$(json_first capture_ms <"$j") bw=$(json_first wall_ms <"$j")
	ROW[capture]="$cp|$bw|$(ratio "$cp" "$bw")"
	SIZE_CKPT=$HOST_SIZE
	note "freeze/incremental/capture: doppel bench --baseline, $HOST_SIZE app, median of $ROUNDS; load at start $L"
else
	say "freeze, incremental, capture: BenchmarkEngine1GiB, $ROUNDS round(s)"
	L=$(load_avg)
	bg go test -run '^$' -bench '^BenchmarkEngine1GiB$' -benchtime 1x -count "$ROUNDS" -timeout 60m ./replicate/ >"$TMP/engine.txt" 2>&1 ||
		{ say "BenchmarkEngine1GiB failed:"; tail -20 "$TMP/engine.txt" >&2; }
	e=$TMP/engine.txt
	fr=$(grep '^BenchmarkEngine1GiB/Freeze' "$e" | metric window-ms | median)
	bf=$(grep '^BenchmarkEngine1GiB/Freeze' "$e" | metric bare-frozen-ms | median)
	cf=$(grep '^BenchmarkEngine1GiB/Freeze' "$e" | metric criu-frozen-ms | median)
	ROW[freeze]="$fr|$bf|$(ratio "$fr" "$bf")"
	is=$(grep '^BenchmarkEngine1GiB/Incremental' "$e" | metric incr-stored-MiB | median)
	fs=$(grep '^BenchmarkEngine1GiB/Incremental' "$e" | metric full-stored-MiB | median)
	il=$(grep '^BenchmarkEngine1GiB/Incremental' "$e" | metric incr-lz4-MiB | median)
	fl=$(grep '^BenchmarkEngine1GiB/Incremental' "$e" | metric full-lz4-MiB | median)
	ROW[incr]="$is|$fs|$(ratio "$is" "$fs")"
	cp=$(grep '^BenchmarkEngine1GiB/Capture' "$e" | metric capture-ms | median)
	bw=$(grep '^BenchmarkEngine1GiB/Capture' "$e" | metric bare-dump-ms | median)
	ROW[capture]="$cp|$bw|$(ratio "$cp" "$bw")"
	SIZE_CKPT=1GiB
	note "freeze/incremental/capture: BenchmarkEngine1GiB (replicate/), median of $ROUNDS; the freeze is the engine's whole window (PSB freeze to thaw), CRIU's own frozen_time inside it ${cf:-?} ms; on the wire (LZ4) the incremental epoch is ${il:-?} MiB of ${fl:-?} MiB ($(ratio "$il" "$fl")); the bare dump is CRIU through the same go-criu RPC path with the same options; load at start $L"
fi
fi

# ------------------------------------------------------------------ cluster
if want relocate || want throughput || want failover; then
X=$((1 + RANDOM % 250))
for _ in $(seq 20); do
	(exec 3<>"/dev/tcp/127.77.$X.1/7946") 2>/dev/null || break
	X=$((1 + RANDOM % 250))
done
start_node() { # NAME IP [JOIN]
	local n=$1 ip=$2 join=${3:-}
	mkdir -p "$TMP/$n"
	local args=(--config "$CFG" node --name "$n" --bind "$ip" --state-dir "$TMP/$n" --socket "$TMP/$n/api.sock"
		--rate-limit "$RATE" --preset "$PRESET")
	[ -z "$join" ] || args+=(--join "$join")
	setsid "$DOPPEL" "${args[@]}" >>"$TMP/$n.log" 2>&1 </dev/null &
	NODE_PID[$n]=$!
	NODE_IP[$n]=$ip
}
cluster_ok() { # NODE MEMBERS
	local s
	s=$(DN "$1" status 2>/dev/null) || return 1
	grep -q "quorum yes" <<<"$s" && grep -q ", $2 member(s) alive" <<<"$s"
}
say "starting 3 nodes on 127.77.$X.1-3 (rate limit $RATE bytes/s)"
for i in 1 2 3; do
	NODES+=("n$i")
	start_node "n$i" "127.77.$X.$i" "$([ "$i" = 1 ] || echo "127.77.$X.1")"
	wait_until 60 "node n$i" DN "n$i" status || die "node n$i did not start (see $TMP/n$i.log)"
done
wait_until 60 "a 3-node cluster with quorum" cluster_ok n1 3 || die "no 3-node cluster"

# app_json NODE: the cluster's apps as JSON (one app at a time here).
in_sync() { # NODE APP CLONES
	local j
	j=$(DN "$1" ls -o json 2>/dev/null) || return 1
	grep -q "\"name\": \"$2\"" <<<"$j" || return 1
	[ "$(json_first state <<<"$j")" = running ] || return 1
	[ "$(json_first newest_epoch <<<"$j")" -ge 1 ] || return 1
	[ "$(grep -c '"state": "in-sync"' <<<"$j")" -ge "$3" ]
}
app_field() { DN "$1" ls -o json 2>/dev/null | json_first "$2"; }
run_app() { # NODE NAME SIZE DIRTY PORT INTERVAL REPLICAS [SERVICE]
	local n=$1 name=$2 size=$3 dirty=$4 port=$5 interval=$6 replicas=$7 svc=${8:-}
	local args=(run "$name" --replicas "$replicas" --interval "$interval" --wait 2m)
	[ -z "$svc" ] || args+=(--service "$svc")
	APPS+=("$name")
	ALL_APPS+=("$name")
	LIMIT=300 DN "$n" "${args[@]}" -- "$DOPPEL" bench app --size "$size" --dirty-rate "$dirty" --listen "127.0.0.1:$port" >/dev/null &&
		# Running is not serving: the app fills its memory first.
		wait_until 180 "$name to answer" D bench probe --addr "127.0.0.1:$port" --timeout 1s
}
# remove_app NODE NAME: stop and remove the app, and make sure none of its
# processes runs on any node afterwards (killing and reporting leftovers),
# so that the next measurement has the host to itself.
remove_app() {
	local rc=0 a n keep=()
	DN "$1" stop "$2" >/dev/null || { say "doppel stop $2 failed"; rc=1; }
	DN "$1" rm "$2" >/dev/null || { say "doppel rm $2 failed"; rc=1; }
	for a in "${APPS[@]}"; do [ "$a" = "$2" ] || keep+=("$a"); done
	APPS=("${keep[@]}")
	for n in "${NODES[@]}"; do
		if ! wait_until 10 "$2's processes on $n to exit" app_gone "$TMP/$n" "$2"; then
			note "BUG: $2 still ran on $n after doppel stop and rm; killed"
			kill_app "$TMP/$n" "$2"
			rc=1
		fi
	done
	return "$rc"
}
fi

# --------------------------------------------------------------- relocation
if want relocate; then
say "relocation: $RELOC_SIZE app dirtying 1%/s, link capped at $RATE bytes/s, $ROUNDS round(s) against stop-and-copy"
L=$(load_avg)
RAPP=reloc-$RUN_ID
RPORT=$(free_port)
reloc_ms=() client_ms=() naive_ms=() reloc_failed=0 naive_failed=0
# do_reloc relocates the app to its clone while a client hammers it (one
# connection, a PING every millisecond after the last answer: PING leaves
# the app's memory alone, so that it keeps dirtying 1%/s, and the pacing
# leaves the CPU to what is measured, as the stop-and-copy baseline runs
# without a client; the longest wait for an answer is the pause as the
# client sees it, to the millisecond, its TCP connection moving with the
# app); 1: the relocation failed (it is counted and the rounds go on),
# 2: the app is not in sync (the rounds stop).
do_reloc() {
	local to out lp gap rc=0 keep=() g
	wait_until 180 "$RAPP in sync" in_sync n1 "$RAPP" 1 || return 2
	to=$(app_field n1 node) # the clone, holding the newest epoch
	setsid "$DOPPEL" --config "$CFG" bench load --addr "127.0.0.1:$RPORT" --request PING --pace 1ms --conns 1 --duration 10m \
		>"$TMP/reloc-load.out" 2>>"$TMP/reloc-load.log" </dev/null &
	lp=$!
	PGIDS+=("$lp")
	sleep 0.5 # the client is sending
	out=$(LIMIT=300 DN n1 relocate "$RAPP" --to "$to" 2>>"$TMP/relocate.log") || rc=1
	sleep 0.5 # answers from the target
	kill -INT "$lp" 2>/dev/null || true
	wait "$lp" || true
	for g in "${PGIDS[@]}"; do [ "$g" = "$lp" ] || keep+=("$g"); done
	PGIDS=("${keep[@]}")
	if [ "$rc" != 0 ]; then
		reloc_failed=$((reloc_failed + 1))
		note "relocation $((${#reloc_ms[@]} + reloc_failed)) failed: $(tail -1 "$TMP/relocate.log")"
		return 1
	fi
	echo "$out" >>"$TMP/relocate.log"
	reloc_ms+=("$(sed -n 's/.*pause \([0-9.]*\) ms.*/\1/p' <<<"$out")")
	gap=$(sed -n 's/.*max_gap_ms=\([0-9.]*\).*/\1/p' "$TMP/reloc-load.out")
	if [ -n "$gap" ]; then
		client_ms+=("$gap")
	else
		note "relocation $((${#reloc_ms[@]} + reloc_failed)): the client's connection did not survive ($(tail -1 "$TMP/reloc-load.log"))"
	fi
}
do_naive() {
	local np
	np=$(free_port)
	if ! bg "$DOPPEL" --config "$CFG" --state-dir "$TMP/naive" bench stop-and-copy --size "$RELOC_SIZE" --dirty-rate 0.01 \
		--rate-limit "$RATE" --bind "127.77.$X.9" --listen "127.0.0.1:$np" --json >"$TMP/naive.json" 2>>"$TMP/naive.log"; then
		naive_failed=$((naive_failed + 1))
		note "stop-and-copy failed: $(tail -1 "$TMP/naive.log")"
		return 1
	fi
	naive_ms+=("$(sed -n 's/.*"pause_ms":\([0-9.]*\).*/\1/p' "$TMP/naive.json")")
}
if run_app n1 "$RAPP" "$RELOC_SIZE" 0.01 "$RPORT" 5s 1 && wait_until 180 "$RAPP in sync" in_sync n1 "$RAPP" 1; then
	for r in $(seq "$ROUNDS"); do
		rc=0
		if [ $((r % 2)) = 1 ]; then
			do_reloc || rc=$?
			[ "$rc" = 2 ] || do_naive || true
		else
			do_naive || true
			do_reloc || rc=$?
		fi
		[ "$rc" != 2 ] || { note "relocation: $RAPP not in sync after round $((r - 1)); rounds stopped"; break; }
		say "round $r: relocate pause $(last "${client_ms[@]}") ms seen by the client ($(last "${reloc_ms[@]}") ms printed by doppel), stop-and-copy $(last "${naive_ms[@]}") ms"
	done
	remove_app n1 "$RAPP" || say "could not remove $RAPP"
else
	say "relocation app did not start or sync (see $TMP/n1.log)"
fi
# The pause is the client's when every relocation has one, else doppel's.
pm_=$(printf '%s\n' "${reloc_ms[@]}" | median) nm_=$(printf '%s\n' "${naive_ms[@]}" | median)
rm_=$pm_ rwhat="printed by doppel relocate (source frozen → target serving)"
if [ "${#client_ms[@]}" -gt 0 ] && [ "${#client_ms[@]}" = "${#reloc_ms[@]}" ]; then
	rm_=$(printf '%s\n' "${client_ms[@]}" | median)
	rwhat="the longest wait for one answer of a client sending a PING every millisecond during the relocation (one connection, which moves with the app; doppel relocate printed [${reloc_ms[*]}] ms, source frozen → target serving)"
fi
ROW[relocate]="$rm_|$nm_|$(ratio "$rm_" "$nm_")"
note "relocation: pause = $rwhat, to the clone node; stop-and-copy = criu dump (app stopped) + tar of the images over the peer transport capped at the same rate + criu restore + first answer, images on tmpfs at both ends; nodes with --preset $PRESET; samples doppel [${client_ms[*]:-${reloc_ms[*]}}] naive [${naive_ms[*]}] ms; failed: $reloc_failed relocation(s), $naive_failed stop-and-copy; load at start $L"
fi

# --------------------------------------------------------------- throughput
if want throughput; then
say "throughput: $TP_SIZE app, $TP_WINDOW windows, checkpoints every 1s and 5s vs unmanaged, $ROUNDS round(s)"
L=$(load_avg)
tp_un=() tp_1=() tp_5=()
tp_measure() { # KIND -> appends a rate
	local kind=$1 port rate name pid
	port=$(free_port)
	case "$kind" in
	unmanaged)
		setsid "$DOPPEL" bench app --size "$TP_SIZE" --listen "127.0.0.1:$port" >"$TMP/tp-app.log" 2>&1 </dev/null &
		pid=$!
		PGIDS+=("$pid")
		wait_until 120 "the unmanaged app" D bench probe --addr "127.0.0.1:$port" --timeout 1s || return 1
		;;
	*)
		name=tp$kind-$RUN_ID-$RANDOM
		if ! { run_app n1 "$name" "$TP_SIZE" 0 "$port" "$kind" 1 && wait_until 180 "$name in sync" in_sync n1 "$name" 1; }; then
			remove_app n1 "$name"
			return 1
		fi
		;;
	esac
	rate=$(D bench load --addr "127.0.0.1:$port" --conns 4 --duration "$TP_WINDOW" | sed -n 's/.*rate=\([0-9.]*\).*/\1/p')
	case "$kind" in
	unmanaged) kill_group "$pid" ;;
	*) remove_app n1 "$name" ;;
	esac
	[ -n "$rate" ] || return 1
	case "$kind" in
	unmanaged) tp_un+=("$rate") ;;
	1s) tp_1+=("$rate") ;;
	5s) tp_5+=("$rate") ;;
	esac
}
for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then order="unmanaged 1s 5s"; else order="5s 1s unmanaged"; fi
	for k in $order; do tp_measure "$k" || say "throughput ($k) failed"; done
	say "round $r: unmanaged $(last "${tp_un[@]}"), every 1s $(last "${tp_1[@]}"), every 5s $(last "${tp_5[@]}") requests/s"
done
un=$(printf '%s\n' "${tp_un[@]}" | median) t1=$(printf '%s\n' "${tp_1[@]}" | median) t5=$(printf '%s\n' "${tp_5[@]}" | median)
ROW[tp1]="$t1|$un|$(ratio "$t1" "$un")"
ROW[tp5]="$t5|$un|$(ratio "$t5" "$un")"
note "throughput: WORK requests (each rewrites a word of one page) from 4 connections straight to the app for $TP_WINDOW; managed = doppel run with 1 clone in the 3-node loopback cluster (the clone's receive shares this host's CPUs), nodes with --preset $PRESET; unmanaged = the same app as a plain process; samples unmanaged [${tp_un[*]}] 1s [${tp_1[*]}] 5s [${tp_5[*]}]; load at start $L"
fi

# ----------------------------------------------------------------- failover
if want failover; then
L=$(load_avg)
fo_ms=() rr_ms=() rr_failed=0
# do_rawrestore: one round of the failover baseline, the same app as
# doppel's side restored by CRIU alone on one node; appends to rr_ms.
do_rawrestore() {
	local port args
	port=$(free_port)
	args=(--listen "127.0.0.1:$port" --warmup 1s --json)
	if [ "$FAILOVER_FROM" = chaos ]; then
		rm -rf "$TMP/rr-data"
		args+=(--request "GET k" -- "$KVAPP" -listen "127.0.0.1:$port" -data "$TMP/rr-data" -ballast 64)
	else
		args+=(--size "$FO_SIZE" --dirty-rate 0.01)
	fi
	if ! bg "$DOPPEL" --config "$CFG" --state-dir "$TMP/rawrestore" bench raw-restore "${args[@]}" >"$TMP/rawrestore.json" 2>>"$TMP/rawrestore.log"; then
		rr_failed=$((rr_failed + 1))
		note "raw restore failed: $(tail -1 "$TMP/rawrestore.log")"
		return 1
	fi
	rr_ms+=("$(sed -n 's/.*"total_ms":\([0-9.]*\).*/\1/p' "$TMP/rawrestore.json")")
}
if [ "$FAILOVER_FROM" = chaos ]; then
	say "failover: BenchmarkFailover64MiB (failover/chaos), one failover per round, alternated with a raw CRIU restore of the same app, $ROUNDS round(s)"
	KVAPP=$TMP/kvapp
	go build -o "$KVAPP" ./failover/chaos/testdata/kvapp || die "go build of the chaos tests' app failed"
	# do_chaos R: one failover of the chaos benchmark; appends to fo_ms.
	do_chaos() {
		local out=$TMP/failover-$1.txt
		bg go test -run '^$' -bench '^BenchmarkFailover64MiB$' -benchtime 1x -count 1 -timeout 30m ./failover/chaos/ >"$out" 2>&1 ||
			{ say "BenchmarkFailover64MiB failed:"; tail -20 "$out" >&2; return 1; }
		fo_ms+=($(sed -n 's/.* answers \([0-9.]*\)\(m\{0,1\}s\) after the kill.*/\1 \2/p' "$out" | awk '{ print ($2 == "s") ? $1 * 1000 : $1 }'))
	}
	for r in $(seq "$ROUNDS"); do
		if [ $((r % 2)) = 1 ]; then
			do_chaos "$r" || true
			do_rawrestore || true
		else
			do_rawrestore || true
			do_chaos "$r" || true
		fi
		say "round $r: failover $(last "${fo_ms[@]}") ms, raw restore $(last "${rr_ms[@]}") ms"
	done
	fo=$(printf '%s\n' "${fo_ms[@]}" | median)
	rr=$(printf '%s\n' "${rr_ms[@]}" | median)
	note "failover: BenchmarkFailover64MiB (failover/chaos: 3 nodes, kvapp holding 64 MiB, 2 clones, interval 1s, sync journal, kill -9 of the OP node's whole tree → first request answered by the new OP), one failover per round (a fresh cluster each time); samples [${fo_ms[*]}] ms; baseline: \`doppel bench raw-restore\` of the same kvapp (64 MiB ballast) in its own PID namespace on one node: criu dump --leave-running to tmpfs, kill -9, criu restore of that dump, first GET answered (no detection, election, transfer or journal); samples [${rr_ms[*]}] ms, $rr_failed failed; the two alternate which goes first; load at start $L"
else
	say "failover: $FO_SIZE app with 2 clones, interval 1s, kill -9 of the OP daemon and its app, alternated with a raw CRIU restore of the same app, $ROUNDS round(s)"
	FAPP=fo-$RUN_ID
	FPORT=$(free_port) SPORT=$(free_port)
	if run_app n1 "$FAPP" "$FO_SIZE" 0.01 "$FPORT" 1s 2 ":$SPORT=127.0.0.1:$FPORT"; then
		for r in $(seq "$ROUNDS"); do
			[ $((r % 2)) = 1 ] || do_rawrestore || true
			wait_until 180 "$FAPP in sync with 2 clones" in_sync n1 "$FAPP" 2 || break
			op=$(app_field n1 op)
			live=""
			for n in "${NODES[@]}"; do [ "$n" = "$op" ] || live=$live${live:+,}${NODE_IP[$n]}:$SPORT; done
			apid=$(app_field "$op" pid)
			[ -n "$apid" ] && [ "$apid" != 0 ] || { say "no pid for $FAPP on $op"; break; }
			t0=$(date +%s%N)
			kill -KILL "${NODE_PID[$op]}" "$apid"
			out=$(D bench probe --addr "$live" --since "$t0" --timeout 60s) || { say "no node served $FAPP after the kill"; break; }
			fo_ms+=("$(sed -n 's/.*ms=\([0-9.]*\).*/\1/p' <<<"$out")")
			say "round $r: killed $op; $(sed -n 's/addr=\([^ ]*\).*/\1/p' <<<"$out") answered $(last "${fo_ms[@]}") ms after the kill"
			other=n1
			[ "$op" != n1 ] || other=n2
			wait "${NODE_PID[$op]}" 2>/dev/null || true
			start_node "$op" "${NODE_IP[$op]}" "${NODE_IP[$other]}"
			wait_until 60 "node $op back" cluster_ok "$other" 3 || break
			[ $((r % 2)) = 0 ] || do_rawrestore || true
			say "round $r: raw restore $(last "${rr_ms[@]}") ms"
		done
		remove_app n1 "$FAPP" || say "could not remove $FAPP"
	else
		say "failover app did not start"
	fi
	fo=$(printf '%s\n' "${fo_ms[@]}" | median)
	rr=$(printf '%s\n' "${rr_ms[@]}" | median)
	note "failover: this script's cluster (nodes with --preset $PRESET: its failure detection sets most of the time), $FO_SIZE app dirtying 1%/s, 2 clones, interval 1s, sync journal; kill -9 of the OP daemon and the app → first PING answered through the service on another node; samples [${fo_ms[*]}] ms; baseline: \`doppel bench raw-restore\` of the same app on one node (criu dump --leave-running to tmpfs, kill -9, criu restore of that dump, first PING answered), alternated with the failovers; samples [${rr_ms[*]}] ms, $rr_failed failed; load at start $L"
fi
ROW[failover]="$fo|$rr|$(ratio "$fo" "$rr")"
fi

# ------------------------------------------------------------------- report
LOAD_END=$(load_avg)
HOSTBENCH=""
if [ "$QUICK" = 0 ] && [ -z "$ONLY" ]; then
	say "doppel bench on this host ($HOST_SIZE, 3 rounds, recommendation for 1 GiB at 1%/s over 1 Gbit/s)"
	bg "$DOPPEL" --config "$CFG" --state-dir "$TMP/hostbench" bench --size "$HOST_SIZE" --rounds 3 --baseline --app-size 1GiB --dirty-rate 1% \
		--link-rate "$RATE" --workers 3 >"$TMP/hostbench.txt" 2>"$TMP/hostbench.log" && HOSTBENCH=$(cat "$TMP/hostbench.txt") ||
		say "doppel bench failed: $(tail -1 "$TMP/hostbench.log")"
fi

goal_met() { # VALUE OP LIMIT
	awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { if (v == "") { print "no number"; exit } ok = (op == "<=") ? v <= l : v >= l; print ok ? "met" : "NOT met" }'
}
missing=()
table() {
	local key label unit goalop goal d b r cell
	printf '| scenario | doppel (median) | baseline (median) | ratio | goal |\n'
	printf '|---|---|---|---|---|\n'
	while IFS='|' read -r key label unit goalop goal; do
		case "$key" in tp*) want throughput ;; *) want "$key" ;; esac || continue
		IFS='|' read -r d b r <<<"${ROW[$key]:-||}"
		[ -n "$d" ] || missing+=("$key")
		if [ "$key" = failover ]; then
			[ -n "$b" ] || missing+=("failover-baseline")
			cell="median ≤ $goal ms: $(goal_met "$d" "$goalop" "$goal")"
			printf '| %s | %s | %s | %s | %s |\n' "$label" "${d:-none} ms" "${b:-none} ms" "${r:-none}" "$cell"
			continue
		fi
		if [ "$goal" = report ]; then
			cell="report"
		else
			cell="≤ $goal: $(goal_met "$r" "$goalop" "$goal")"
		fi
		printf '| %s | %s | %s | %s | %s |\n' "$label" "${d:-none} $unit" "${b:-none} $unit" "${r:-none}" "$cell"
	done <<EOF
freeze|full checkpoint freeze, $SIZE_CKPT RSS (vs bare criu dump --leave-running to tmpfs)|ms|<=|1.10
incr|incremental epoch, 1% pages dirty, $SIZE_CKPT (vs full epoch), stored|MiB|<=|0.03
capture|capture to stored, full $SIZE_CKPT epoch (vs bare dump time)|ms|<=|2.5
relocate|relocation pause, $RELOC_SIZE RSS dirtying 1%/s, 1 Gbit/s link (vs stop-and-copy)|ms|<=|0.35
failover|failover, kill -9 → first served request (vs raw CRIU restore of the same app on one node)|ms|<=|2000
tp1|app throughput, checkpoint every 1 s, $TP_SIZE (vs unmanaged)|req/s|>=|report
tp5|app throughput, checkpoint every 5 s, $TP_SIZE (vs unmanaged)|req/s|>=|report
EOF
}
TABLE=$(table)
table >/dev/null # fills missing[] in this shell
{
	echo
	echo "$TABLE"
	echo
} >&2
echo "$TABLE"

if [ -n "$OUT" ]; then
	{
		echo "# doppel benchmarks"
		echo
		echo "Measured by \`scripts/bench.sh$([ "$QUICK" = 1 ] && echo " --quick")$([ -n "$ONLY" ] && echo " --only $ONLY") --rounds $ROUNDS\` on $START_DATE."
		echo
		echo "- machine: $MACHINE"
		echo "- doppel: $COMMIT"
		echo "- load average (1/5/15 min) at start: $LOAD_START; at the end: $LOAD_END (the machine is shared: other work ran at the same time)"
		echo
		echo "$TABLE"
		echo
		echo "Ratios are doppel's median over the baseline's median. Each round runs doppel and its baseline back to back: relocation, failover, throughput and \`doppel bench --baseline\` alternate which goes first; BenchmarkEngine1GiB runs the bare dump just before the engine's checkpoint in every round."
		echo
		echo "## How each number was measured"
		echo
		for n in "${NOTES[@]}"; do echo "- $n"; done
		if [ -n "$HOSTBENCH" ]; then
			echo
			echo "## doppel bench on this machine"
			echo
			echo "\`doppel bench --size $HOST_SIZE --rounds 3 --baseline --app-size 1GiB --dirty-rate 1% --link-rate $RATE --workers 3\`:"
			echo
			echo '```'
			echo "$HOSTBENCH"
			echo '```'
		fi
	} >"$OUT"
	say "report written to $OUT"
fi
if [ "${#missing[@]}" -gt 0 ]; then
	say "no number for: ${missing[*]} (logs in $TMP; rerun with --keep to inspect them)"
	exit 1
fi
