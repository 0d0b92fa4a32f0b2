#!/usr/bin/env bash
# instructions.sh BINARY [RATIO]: the instructions a sidecar build executes
# per proxied request, counted by valgrind's cachegrind: the same count
# every run to within ~2 % (the runtime's scheduling), where CPU time on
# the shared two-core machines moves 10-20 % (docs/benchmarks.md,
# "Counting instructions").
#
# The sidecar runs under cachegrind with the bench's policy (timeout,
# retries, breaker: e2e/bench prints it), the access log on and GOMAXPROCS=1 GOGC=50, fortio's
# echo server (256 bytes) upstream; fortio sends 400 requests in one run
# and 4,400 in another at 1,000 requests/s from 16 connections; the count
# per request is the difference over 4,000. RATIO > 0 traces at that
# sample ratio to a Jaeger on loopback, its default ports (issue 16's
# targets: 0.01).
# OUT (default a temporary directory) keeps cg-400.out and cg-4400.out;
# `cg_diff cg-400.out cg-4400.out > d; cg_annotate d` says where they go.
#
# Needs valgrind (apt-get install valgrind), and fortio and Jaeger from
# make tools. Every process it starts ends with it.
set -euo pipefail
bin=$(realpath "${1:?usage: instructions.sh BINARY [RATIO]}")
ratio=${2:-0}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$("$root/scripts/tools.sh" --print-dir)/bin"
for c in valgrind cg_annotate curl python3; do
	command -v "$c" >/dev/null || { echo "instructions: $c is missing (valgrind: apt-get install valgrind)" >&2; exit 1; }
done
out=${OUT:-$(mktemp -d)}
mkdir -p "$out/policies"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The bench's policy printer, built before the ports are picked: a
# build takes seconds, in which a picked port could be taken.
(cd "$root" && CGO_ENABLED=0 go build -o "$out/bench" ./e2e/bench)

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

# count N sets total to the sidecar's instructions over a run of N
# requests. Not in $(...): its sidecar is the script's to stop (pids) if
# anything fails.
count() {
	local n=$1
	GODEBUG=cpu.rdtscp=off GOMAXPROCS=1 GOGC=50 valgrind --tool=cachegrind --cache-sim=no \
		--cachegrind-out-file="$out/cg-$n.out" "$bin" run --outbound-addr "127.0.0.1:$out_port" \
		--admin-addr "127.0.0.1:$admin" --policy-dir "$out/policies" --log-level error "${trace[@]}" \
		>"$out/sidecar-$n.log" 2>&1 &
	local vp=$!
	pids+=("$vp")
	local ready=false
	for _ in $(seq 200); do
		kill -0 "$vp" 2>/dev/null || break # exited: its log says why
		if curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1; then
			ready=true
			break
		fi
		sleep 0.2
	done
	$ready || { echo "instructions: the sidecar did not become ready ($out/sidecar-$n.log)" >&2; exit 1; }
	"$tools/fortio" load -qps 1000 -c 16 -n "$n" -uniform -quiet -H "Host: 127.0.0.1:$up" \
		"http://127.0.0.1:$out_port/" >"$out/fortio-$n.log" 2>&1
	grep -q "Code 200 : $n " "$out/fortio-$n.log" || { echo "instructions: not every request answered 200:" >&2; cat "$out/fortio-$n.log" >&2; exit 1; }
	kill -INT "$vp"
	wait "$vp" || true
	# All of cg_annotate's output read: no SIGPIPE under pipefail.
	total=$(cg_annotate "$out/cg-$n.out" | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}')
}
count 400
a=$total
count 4400
b=$total
echo "$(basename "$bin"): $(((b - a) / 4000)) instructions per request (ratio $ratio; $a for 400 requests, $b for 4,400; $out)"
