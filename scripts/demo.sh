#!/usr/bin/env bash
# The main job: builds Cloister and the kms-secret example, then runs
# `cloister demo`, which measures an enclave image, runs it, has the key
# service release a key to it through attestation, and shows the parent
# being refused. README.md's first command.
#
#   bash scripts/demo.sh                # sandbox backend
#   bash scripts/demo.sh --backend qemu # QEMU microVM (needs qemu-system-x86 and a kernel)
#   bash scripts/demo.sh --installed    # with the installed package's binaries
#                                       # (/usr/bin/cloister, /usr/lib/cloister/…)
#
# It needs root for the enclave backends and re-runs itself with sudo when
# started as another user.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	exec sudo --preserve-env=PATH,GOPATH,GOCACHE,GOMODCACHE,GOFLAGS,GOPROXY bash "$0" "$@"
fi

installed=""
rest=()
for a in "$@"; do
	if [ "$a" = --installed ]; then installed=1; else rest+=("$a"); fi
done
set -- ${rest[@]+"${rest[@]}"}

bin=$(mktemp -d /tmp/cloister-demo-bin.XXXXXX)
trap 'rm -rf "$bin"' EXIT
if [ -n "$installed" ]; then
	cloister=/usr/bin/cloister
	init=/usr/lib/cloister/cloister-init
	if [ ! -x "$cloister" ] || [ ! -x "$init" ]; then
		echo "--installed: the cloister package is not installed (bash scripts/build-deb.sh, then dpkg -i)" >&2
		exit 1
	fi
	echo "using the installed $("$cloister" --version); building the kms-secret enclave program…"
else
	cloister=$bin/cloister
	init=$bin/cloister-init
	echo "building cloister, cloister-monitor, cloister-init and the kms-secret enclave program…"
	CGO_ENABLED=0 go build -o "$bin/cloister" ./cmd/cloister
	CGO_ENABLED=0 go build -o "$bin/cloister-monitor" ./cmd/cloister-monitor
	CGO_ENABLED=0 go build -o "$bin/cloister-init" ./cmd/cloister-init
fi
CGO_ENABLED=0 go build -o "$bin/kms-secret-enclave" ./examples/kms-secret/enclave

# The qemu backend's kernel: the one `cloister doctor` recommends for this
# host's QEMU (pass --kernel to choose another).
args=(--init "$init" --app "$bin/kms-secret-enclave")
"$cloister" demo "${args[@]}" "$@"
