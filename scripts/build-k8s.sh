#!/usr/bin/env bash
# Builds kube-apiserver and kubelet from k8s.io/kubernetes through the Go module
# proxy, for the single-node Kubernetes test (parent/shim TestKubernetes).
#
# k8s.io/kubernetes's go.mod replaces its staging modules (k8s.io/api,
# k8s.io/client-go, ...) with ./staging paths, so `go install
# k8s.io/kubernetes/cmd/kubelet@vX` is refused. This script writes a small
# build module that requires k8s.io/kubernetes vX and replaces every staging
# module with its published v0.X release, the replace list generated from
# kubernetes' own go.mod.
#
# v1.34 is the oldest release the module proxy serves: its kubelet still runs
# on cgroup v1 (failCgroupV1 defaults to false), speaks CRI v1, which Debian
# 12's containerd 1.6.20 serves, and its API server works with Debian 12's
# etcd 3.4.23.
#
# The binaries are cached in /var/cache/cloister/k8s/<version>/bin; a second
# run does nothing. Prints the directory of the binaries on its last line.
#
# With --cached-only nothing is built: it prints the directory if the
# binaries are there and fails otherwise.
#
# Environment:
#   K8S_VERSION  the k8s.io/kubernetes version (default below)
#   K8S_CACHE    the cache root (default /var/cache/cloister/k8s)
set -euo pipefail

version=${K8S_VERSION:-v1.34.4}
cache=${K8S_CACHE:-/var/cache/cloister/k8s}/$version
bin=$cache/bin

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kubelet" ]; then
	echo "$bin"
	exit 0
fi
if [ "${1:-}" = --cached-only ]; then
	echo "build-k8s: kube-apiserver and kubelet $version are not built in $bin; run scripts/build-k8s.sh" >&2
	exit 1
fi

# The staging modules are released as v0.<minor>.<patch> with kubernetes v1.<minor>.<patch>.
staging_version=v0.${version#v1.}

export GOFLAGS=-mod=mod GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
work=$cache/build
rm -rf "$work" "$bin.tmp"
mkdir -p "$work" "$bin"
cd "$work"

start=$(date +%s)
mod_before=$(du -sk "$(go env GOMODCACHE)/cache/download" 2>/dev/null | cut -f1 || echo 0)

kgomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
if [ ! -f "$kgomod" ]; then
	echo "build-k8s: cannot find the go.mod of k8s.io/kubernetes@$version in the module cache; check GOPROXY" >&2
	exit 1
fi

{
	echo "module cloister.test/k8sbuild"
	echo
	# Kubernetes' own go and godebug lines: the binaries get upstream's GODEBUG defaults.
	grep -E '^(go|godebug) ' "$kgomod"
	echo
	echo "require k8s.io/kubernetes $version"
	echo
	# "	k8s.io/api => ./staging/src/k8s.io/api" -> "replace k8s.io/api => k8s.io/api v0.X.Y"
	sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/\(k8s\.io/[^[:space:]]*\)[[:space:]]*$#replace \1 => \2 '"$staging_version"'#p' "$kgomod"
} > go.mod
if ! grep -q '^replace k8s.io/client-go ' go.mod; then
	echo "build-k8s: no staging replace list found in $kgomod (format changed?)" >&2
	exit 1
fi

nice -n 10 go get "k8s.io/kubernetes/cmd/kubelet@$version" "k8s.io/kubernetes/cmd/kube-apiserver@$version"

mod_after=$(du -sk "$(go env GOMODCACHE)/cache/download" 2>/dev/null | cut -f1 || echo 0)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	major=${version#v}; major=${major%%.*}
	minor=${version#v*.}; minor=${minor%%.*}
	ldflags="$ldflags -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$bin.tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubelet
mv "$bin.tmp/kube-apiserver" "$bin.tmp/kubelet" "$bin/"
rmdir "$bin.tmp"
end=$(date +%s)
echo "build-k8s: built kube-apiserver and kubelet $version in $(( end - start ))s; module cache grew by $(( (mod_after - mod_before) / 1024 )) MiB" >&2
echo "$bin"
