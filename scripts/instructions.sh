#!/usr/bin/env bash
# instructions.sh [--syscalls] BINARY|nginx|nginx-log|haproxy|caddy [RATIO]: the
# instructions a sidecar build, or one of the harness's peers, executes in
# user mode per proxied request, counted by valgrind's cachegrind: the
# same count every run to within ~2 % (the runtime's scheduling), where
# CPU time on the shared two-core machines moves 10-20 %
# (docs/benchmarks.md, "Counting instructions"). The kernel's work is not
# in it: --syscalls counts instead the system calls (by name) and context
# switches per request of the same process run natively, with perf stat
# over 4,000 requests after 400 unmeasured (needs perf, linux-perf in
# Debian, with access to the syscalls tracepoints: root here).
#
# The sidecar runs under cachegrind with the bench's policy (timeout,
# retries, breaker: e2e/bench prints it), the access log on and
# GOMAXPROCS=1 GOGC=50. A peer runs with the harness's configuration
# (`bench peer-config`) and one worker or thread (Caddy: GOMAXPROCS=1);
# nginx without its master process (with it, the worker's count was never
# written: the first try counted 0 per request); nginx-log is
# nginx with an access log line and the request ID, the sidecar's work
# besides forwarding. Upstream is fortio's echo server (256 bytes); fortio
# sends 400 requests in one run and 4,400 in another at 1,000 requests/s
# from 16 connections; the count per request is the difference over 4,000.
# RATIO > 0 traces the sidecar at that sample ratio to a Jaeger on
# loopback, its default ports (issue 16's targets: 0.01).
# PAYLOAD=N sends POSTs with N-byte bodies (fortio -payload-size) instead
# of GETs.
# OUT (default a temporary directory) keeps cg-400.PID.out and
# cg-4400.PID.out, or perf-4000.txt with --syscalls;
# `cg_diff cg-400.PID.out cg-4400.PID.out > d; cg_annotate d` says where
# they go. CACHESIM=yes adds cachegrind's cache model (level-1 and
# last-level misses: `cg_annotate --sort=D1mw,D1mr d`), slower.
#
# Needs valgrind (apt-get install valgrind), and fortio and Jaeger from
# make tools. Every process it starts ends with it.
set -euo pipefail
syscalls=false
if [ "${1:-}" = --syscalls ]; then
	syscalls=true
	shift
fi
what=${1:?usage: instructions.sh [--syscalls] BINARY|nginx|nginx-log|haproxy|caddy [RATIO]}
ratio=${2:-0}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$("$root/scripts/tools.sh" --print-dir)/bin"
name=$(basename "$what")
need=(valgrind cg_annotate curl python3)
$syscalls && need=(perf curl python3)
for c in "${need[@]}"; do
	command -v "$c" >/dev/null || { echo "instructions: $c is missing (valgrind: apt-get install valgrind; perf: linux-perf)" >&2; exit 1; }
done
out=${OUT:-$(mktemp -d)}
mkdir -p "$out/policies"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The bench's policy printer, built before the ports are picked: a
# build takes seconds, in which a picked port could be taken.
(cd "$root" && CGO_ENABLED=0 go build -o "$out/bench" ./e2e/bench)
# A peer where the harness finds it ($MINIMESH_TOOL_*, the tools
# directory, PATH, the sbin directories).
case $what in
nginx | nginx-log) bin=$("$out/bench" tool nginx) ;;
caddy | haproxy) bin=$("$out/bench" tool "$what") ;;
*) bin=$(realpath "$what") ;;
esac

# Loopback ports the kernel picks.
read -r up out_port admin <<<"$(python3 -c 'import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')"

"$tools/fortio" server -http-port "127.0.0.1:$up" -grpc-port disabled -redirect-port disabled \
	-tcp-port disabled -udp-port disabled -ui-path "" -echo-debug-path "" \
	-echo-server-default-params size=256 -quiet >/dev/null 2>&1 &
pids+=($!)
# The harness's policy: timeout, retries and breaker for the upstream.
"$out/bench" policy "127.0.0.1:$up" >"$out/policies/bench.yaml"
case $what in
nginx | nginx-log | haproxy | caddy)
	if awk -v r="$ratio" 'BEGIN { exit !(r > 0) }'; then
		echo "instructions: $what is not traced (RATIO 0)" >&2
		exit 1
	fi
	"$out/bench" peer-config "$what" "$out" "127.0.0.1:$out_port" "127.0.0.1:$up" |
		sed 's/^master_process on;/master_process off;/' >"$out/peer.conf"
	if [[ $what == nginx* ]] && ! grep -q '^master_process off;' "$out/peer.conf"; then
		echo "instructions: nginx's configuration has no master_process line to turn off ($out/peer.conf)" >&2
		exit 1
	fi
	;;
esac
trace=()
if awk -v r="$ratio" 'BEGIN { exit !(r > 0) }'; then
	# Jaeger all-in-one with its defaults: OTLP/gRPC on 4317 (not to be
	# taken by anything else while this runs).
	"$tools/jaeger" >"$out/jaeger.log" 2>&1 &
	jp=$!
	pids+=("$jp")
	up4317=false
	for _ in $(seq 100); do
		kill -0 "$jp" 2>/dev/null || break
		if (exec 3<>/dev/tcp/127.0.0.1/4317) 2>/dev/null; then
			up4317=true
			break
		fi
		sleep 0.2
	done
	# Spans the sidecar cannot send would count as work per request.
	if ! $up4317 || ! kill -0 "$jp" 2>/dev/null; then
		echo "instructions: Jaeger did not come up on 127.0.0.1:4317 ($out/jaeger.log)" >&2
		exit 1
	fi
	trace=(--otlp-endpoint 127.0.0.1:4317 --trace-sample-ratio "$ratio")
fi

# count N sets total to the measured process's instructions over a run of
# N requests. Not in $(...): its process is the script's to stop (pids) if
# anything fails.
count() {
	local n=$1
	rm -f "$out"/cg-"$n".*.out "$out/perf-$n.txt" # an OUT used before
	local cg=(valgrind --tool=cachegrind --cache-sim="${CACHESIM:-no}" --cachegrind-out-file="$out/cg-$n.%p.out")
	$syscalls && cg=()
	local ready_url="http://127.0.0.1:$admin/ready" stop=INT
	case $what in
	nginx | nginx-log)
		"${cg[@]}" "$bin" -e stderr -p "$out" -c "$out/peer.conf" >"$out/$name-$n.log" 2>&1 &
		ready_url="http://127.0.0.1:$out_port/" stop=QUIT
		;;
	haproxy)
		"${cg[@]}" "$bin" -db -q -f "$out/peer.conf" >"$out/$name-$n.log" 2>&1 &
		ready_url="http://127.0.0.1:$out_port/" stop=TERM
		;;
	caddy)
		# One P, the sidecar's budget as injected; its files under $out.
		GODEBUG=cpu.rdtscp=off GOMAXPROCS=1 XDG_CONFIG_HOME="$out/caddy" XDG_DATA_HOME="$out/caddy" \
			"${cg[@]}" "$bin" run --config "$out/peer.conf" >"$out/$name-$n.log" 2>&1 &
		ready_url="http://127.0.0.1:$out_port/"
		;;
	*)
		GODEBUG=cpu.rdtscp=off GOMAXPROCS=1 GOGC=50 "${cg[@]}" "$bin" run --outbound-addr "127.0.0.1:$out_port" \
			--admin-addr "127.0.0.1:$admin" --policy-dir "$out/policies" --log-level error "${trace[@]}" \
			>"$out/$name-$n.log" 2>&1 &
		;;
	esac
	local vp=$!
	pids+=("$vp")
	local ready=false
	for _ in $(seq 200); do
		kill -0 "$vp" 2>/dev/null || break # exited: its log says why
		if curl -fs -H "Host: 127.0.0.1:$up" "$ready_url" >/dev/null 2>&1; then
			ready=true
			break
		fi
		sleep 0.2
	done
	$ready || { echo "instructions: $what did not become ready ($out/$name-$n.log)" >&2; exit 1; }
	if $syscalls; then
		load 400
		# perf stat counts from its start, half a second before the load:
		# what the process does on its own then (a Go runtime's monitor
		# thread, its timers) is counted too, a few calls a second.
		perf stat -x, -e 'syscalls:sys_enter_*,context-switches' -p "$vp" -o "$out/perf-$n.txt" 2>"$out/perf-$n.log" &
		local pp=$!
		pids+=("$pp")
		sleep 0.5
		kill -0 "$pp" 2>/dev/null || { echo "instructions: perf stat failed ($out/perf-$n.log)" >&2; exit 1; }
		load "$n"
		kill -INT "$pp"
		wait "$pp" || true # perf stat's status on SIGINT is not 0; its counts are checked below
		unpid "$pp"
		grep -q ',context-switches,' "$out/perf-$n.txt" || { echo "instructions: perf stat wrote no counts ($out/perf-$n.txt)" >&2; exit 1; }
	else
		load "$n"
	fi
	kill -0 "$vp" 2>/dev/null || { echo "instructions: $what ended during the load ($out/$name-$n.log)" >&2; exit 1; }
	kill -"$stop" "$vp"
	wait "$vp" || true
	unpid "$vp"
	$syscalls && return
	total=0
	local f t
	for f in "$out"/cg-"$n".*.out; do
		# All of cg_annotate's output read: no SIGPIPE under pipefail.
		t=$(cg_annotate "$f" | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}')
		total=$((total + t))
	done
}
# unpid PID takes a process waited for out of pids: its number may be
# another's by the time cleanup runs.
unpid() {
	local p keep=()
	for p in "${pids[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	pids=("${keep[@]}")
}
# load N sends N requests through the measured process.
load() {
	"$tools/fortio" load -qps 1000 -c 16 -n "$1" -uniform -quiet ${PAYLOAD:+-payload-size "$PAYLOAD"} -H "Host: 127.0.0.1:$up" \
		"http://127.0.0.1:$out_port/" >"$out/fortio-$1.log" 2>&1
	grep -q "Code 200 : $1 " "$out/fortio-$1.log" || { echo "instructions: not every request answered 200:" >&2; cat "$out/fortio-$1.log" >&2; exit 1; }
}
if $syscalls; then
	count 4000
	# perf's CSV: count,unit,event,...; the calls made at least once in
	# 100 requests, most first.
	calls=$(awk -F, '$3 ~ /^syscalls:/ && $1 ~ /^[0-9]+$/ && $1 >= 40 {
		e = $3; sub(/^syscalls:sys_enter_/, "", e); printf "%.2f %s\n", $1 / 4000, e
	}' "$out/perf-4000.txt" | sort -rn | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')
	awk -F, -v who="$name" -v calls="$calls" -v out="$out" '$1 ~ /^[0-9]+$/ {
		if ($3 == "context-switches") cs = $1; else if ($3 ~ /^syscalls:/) total += $1
	} END {
		printf "%s: %.2f system calls per request (%s), %.2f context switches; %s\n", who, total / 4000, calls, cs / 4000, out
	}' "$out/perf-4000.txt"
	exit 0
fi
count 400
a=$total
count 4400
b=$total
echo "$name: $(((b - a) / 4000)) instructions per request (ratio $ratio; $a for 400 requests, $b for 4,400; $out)"
