#!/usr/bin/env bash
# tools.sh installs the tools that minimesh's tests and benchmarks need. Go
# tools are built once into a cache outside the clone, keyed by version, so a
# fresh clone on the same machine reuses them; Debian packages are installed
# only when missing. It is idempotent and fast when everything is present.
#
#   scripts/tools.sh              install whatever is missing
#   scripts/tools.sh NAME...      only these (tool or Debian package names)
#   scripts/tools.sh --print-dir  print the cache directory
#
# A Go tool lands in $TOOLS_DIR/NAME-VERSION/NAME, and $TOOLS_DIR/bin/NAME
# links to it so that callers need not know versions: the Makefile puts
# $TOOLS_DIR/bin first on PATH and exports MINIMESH_TOOLS_DIR, and
# e2e/internal/tools looks there.
#
# Adding a tool is one line in tools() below:
#   go_tool NAME VERSION PACKAGE      go install PACKAGE@VERSION
#   mod_tool NAME DIR PACKAGE [LDFLAGS [TAGS]]
#                                     go build PACKAGE in the module tools/DIR/;
#                                     for modules that need a replace block;
#                                     the cache key is PACKAGE's module
#                                     version there
#   deb_pkg PACKAGE...                apt-get install the missing ones
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${MINIMESH_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/minimesh/tools}"

tools() {
	go_tool fortio v1.66.5 fortio.org/fortio # newer versions miss a module
	go_tool staticcheck v0.8.2 honnef.co/go/tools/cmd/staticcheck
	# Jaeger v2 (all-in-one: OTLP in, query API out); tools/jaeger/go.mod pins it.
	mod_tool jaeger jaeger github.com/jaegertracing/jaeger/cmd/jaeger \
		'-X github.com/jaegertracing/jaeger/internal/version.latestVersion=$VERSION'
	# The Kubernetes API server and kubectl (tools/kube/go.mod maps the staging
	# modules); without gitVersion /version would say v0.0.0-master.
	mod_tool kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver \
		'-X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37'
	mod_tool kubectl kube k8s.io/kubernetes/cmd/kubectl \
		'-X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37'
	go_tool helm v3.22.0 helm.sh/helm/v3/cmd/helm
	# The node side of a one-node cluster that runs pods (e2e/internal/cluster),
	# from the same module as the API server: kubelet takes ~8 min to build.
	local kv='-X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37'
	mod_tool kubelet kube k8s.io/kubernetes/cmd/kubelet "$kv"
	mod_tool kube-controller-manager kube k8s.io/kubernetes/cmd/kube-controller-manager "$kv"
	mod_tool kube-scheduler kube k8s.io/kubernetes/cmd/kube-scheduler "$kv"
	mod_tool kube-proxy kube k8s.io/kubernetes/cmd/kube-proxy "$kv"
	go_tool coredns v1.15.0 github.com/coredns/coredns
	# Prometheus with Kubernetes service discovery, which Debian's package
	# leaves out (tools/prometheus/go.mod; ~5 min to build). Debian's package
	# stays for promtool.
	mod_tool prometheus prometheus github.com/prometheus/prometheus/cmd/prometheus \
		'-X github.com/prometheus/common/version.Version=$VERSION' remove_all_sd,enable_kubernetes_sd
	# Caddy v2, a peer of the benchmark harness (e2e/bench): the Go reverse
	# proxy most teams know (tools/caddy/go.mod; ~2 min to build cold).
	mod_tool caddy caddy github.com/caddyserver/caddy/v2/cmd/caddy \
		'-X github.com/caddyserver/caddy/v2.CustomVersion=$VERSION'
	deb_pkg nginx-light haproxy wrk curl iproute2 iptables prometheus etcd-server
	deb_pkg gcc libc6-dev # cgo, for go test -race
	deb_pkg containerd runc containernetworking-plugins # the one-node cluster
	# Real clients that know nothing of a proxy, and servers that speak
	# first or over TLS, for transparent interception (e2e/interception).
	deb_pkg wget python3 python3-requests python3-httpx python3-aiohttp python3-urllib3 \
		nodejs default-jdk-headless postgresql redis-server
	# A Python gRPC client and h2c load through the sidecar (e2e/grpc).
	deb_pkg python3-grpcio nghttp2-client
}

if [[ "${1:-}" == "--print-dir" ]]; then
	echo "$TOOLS_DIR"
	exit 0
fi

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

WANTED=("$@")
declare -A SEEN=()
TMPS=()
TMP_DIR=""
APT_UPDATED=""
cleanup() {
	local t
	for t in "${TMPS[@]}"; do rm -rf "$t"; done
}
trap cleanup EXIT

say() { printf 'tools: %-12s %s\n' "$1" "$2"; }

# wanted NAME: true when NAME was asked for, or nothing in particular was.
wanted() {
	SEEN[$1]=1
	((${#WANTED[@]})) || return 0
	local w
	for w in "${WANTED[@]}"; do [[ "$w" == "$1" ]] && return 0; done
	return 1
}

# present NAME DIR: when DIR/NAME exists, link it into $TOOLS_DIR/bin and
# say so.
present() {
	[[ -x "$2/$1" ]] || return 1
	mkdir -p "$TOOLS_DIR/bin"
	ln -sfn "../$(basename "$2")/$1" "$TOOLS_DIR/bin/$1"
	say "$1" "${3:-present} ($2/$1)"
}

# newtmp NAME: a scratch directory in $TMP_DIR, removed on exit.
newtmp() {
	TMP_DIR="$(mktemp -d "$TOOLS_DIR/.tmp-$1-XXXXXX")"
	TMPS+=("$TMP_DIR")
}

# go_tool NAME VERSION PACKAGE: go install PACKAGE@VERSION as
# $TOOLS_DIR/NAME-VERSION/NAME unless it is there already.
go_tool() {
	local name=$1 version=$2 pkg=$3
	wanted "$name" || return 0
	local dir="$TOOLS_DIR/$name-$version"
	present "$name" "$dir" && return 0
	newtmp "$name"
	local tmp=$TMP_DIR
	GOBIN="$tmp" go install "$pkg@$version"
	mkdir -p "$dir"
	mv "$tmp/$(basename "$pkg")" "$dir/$name"
	present "$name" "$dir" "installed: go install $pkg@$version"
}

# mod_tool NAME DIR PACKAGE [LDFLAGS [TAGS]]: go build PACKAGE in the module
# tools/DIR/ (its go.mod pins the version and holds any replace block), as
# $TOOLS_DIR/NAME-MODULEVERSION/NAME unless it is there already. '$VERSION' in
# LDFLAGS stands for that module version; TAGS are build tags.
mod_tool() {
	local name=$1 mod="$ROOT/tools/$2" pkg=$3 ldflags=${4:-} tags=${5:-}
	wanted "$name" || return 0
	local version
	version="$(cd "$mod" && go list -f '{{.Module.Version}}' "$pkg")"
	local dir="$TOOLS_DIR/$name-$version"
	present "$name" "$dir" && return 0
	ldflags=${ldflags//\$VERSION/$version}
	newtmp "$name"
	local tmp=$TMP_DIR
	local start=$SECONDS
	say "$name" "building $pkg@$version in ${mod#"$ROOT/"} (once per machine)"
	(cd "$mod" && go build -trimpath -tags "$tags" -ldflags "-s -w $ldflags" -o "$tmp/$name" "$pkg")
	mkdir -p "$dir"
	mv "$tmp/$name" "$dir/$name"
	present "$name" "$dir" "installed in $((SECONDS - start))s: go build $pkg (${mod#"$ROOT/"}/go.mod)"
}

# deb_pkg PACKAGE...: apt-get install the missing ones, without letting their
# maintainer scripts start system services that would hold ports (nginx :80,
# etcd :2379, prometheus :9090): our tests start their own instances.
deb_pkg() {
	local missing=() p
	for p in "$@"; do
		wanted "$p" || continue
		if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
			say "$p" "present (deb)"
		else
			missing+=("$p")
		fi
	done
	((${#missing[@]})) || return 0
	if [[ $(id -u) -ne 0 ]]; then
		echo "tools: need root to apt-get install ${missing[*]}" >&2
		exit 1
	fi
	local own_policy=""
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\n# minimesh scripts/tools.sh: start no services while installing\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		own_policy=1
	fi
	export DEBIAN_FRONTEND=noninteractive
	if [[ -z "$APT_UPDATED" ]]; then
		apt-get update -qq </dev/null
		APT_UPDATED=1
	fi
	local rc=0
	apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		"${missing[@]}" </dev/null >/dev/null || rc=$?
	[[ -z "$own_policy" ]] || rm -f /usr/sbin/policy-rc.d
	((rc == 0)) || { echo "tools: apt-get install ${missing[*]} failed ($rc)" >&2; exit "$rc"; }
	stop_services
	for p in "${missing[@]}"; do say "$p" "installed: apt-get install"; done
}

# stop_services ends daemons that a package started anyway (a system whose
# policy-rc.d lets services start). Only the processes named in their
# pidfiles are signalled.
stop_services() {
	local f pid
	for f in /run/nginx.pid /run/haproxy.pid /run/haproxy-master.pid /run/prometheus.pid \
		/run/prometheus/prometheus.pid /run/etcd.pid /run/etcd/etcd.pid; do
		[[ -r "$f" ]] || continue
		pid="$(tr -dc '0-9' <"$f")"
		if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			say "$(basename "$f" .pid)" "stopped the service its package started (pid $pid)"
		fi
	done
}

mkdir -p "$TOOLS_DIR"
tools
for w in "${WANTED[@]}"; do
	[[ -n "${SEEN[$w]:-}" ]] || { echo "tools: unknown tool $w" >&2; exit 2; }
done
