#!/usr/bin/env bash
# Runs the installed daemon under systemd (cloister-daemon.service) and
# checks what the unit promises: it becomes active only once it serves its
# API (Type=notify), an enclave launched through it survives
# "systemctl restart" and is adopted, and "systemctl stop" leaves it running
# (KillMode=process) until it is terminated. scripts/test.sh runs it after
# installing the package.
#
# It needs systemd as PID 1. Where systemd is not PID 1 (containers,
# Firecracker VMs such as this repository's CI machine) the check cannot
# run: it says so and exits 77 (the "not run" status of automake), which
# scripts/test.sh reports as NOT RUN in its summary. What is checked there
# instead: "systemd-analyze verify" of every unit (scripts/test.sh), and the
# daemon's side of the unit's contract by e2e
# (TestOpsDaemonNotifiesServiceManager, TestOpsDelegatedCgroup).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /run/systemd/system ]; then
	pid1=$(tr '\0' ' ' < /proc/1/cmdline | cut -c1-60)
	echo "check-service: NOT RUN: systemd is not PID 1 on this machine (PID 1 is: ${pid1:-unknown});" \
		"cloister-daemon.service was not run under a service manager"
	exit 77
fi

sock=/run/cloister/cloisterd.sock
work=$(mktemp -d /tmp/cloister-service.XXXXXX)
trap 'cloister terminate-enclave --all --socket "$sock" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

mkdir -p "$work/rootfs/bin"
CGO_ENABLED=0 go build -o "$work/rootfs/bin/hello-enclave" ./examples/hello/enclave
cloister build-enclave --rootfs "$work/rootfs" --cmd /bin/hello-enclave --output-file "$work/hello.eif" >/dev/null
chmod 0755 "$work"

systemctl daemon-reload
systemctl restart cloister-daemon.service
# Type=notify: "restart" returns once the daemon sent READY=1.
systemctl is-active --quiet cloister-daemon.service
cloister describe-enclaves --socket "$sock" >/dev/null
curl -fsS --unix-socket "$sock" http://localhost/healthz >/dev/null

run=$(cloister run-enclave --socket "$sock" --eif-path "$work/hello.eif" --memory 128 --cpu-count 1 --enclave-name svc-check)
id=$(sed -n 's/.*"EnclaveID": "\(.*\)".*/\1/p' <<< "$run")
monitor=$(sed -n 's/.*"ProcessID": \([0-9]*\).*/\1/p' <<< "$run")
[ -n "$id" ] && [ -n "$monitor" ] || { echo "check-service: run-enclave gave no EnclaveID or ProcessID: $run" >&2; exit 1; }

running() { cloister describe-enclaves --socket "$sock" | grep -q "\"EnclaveID\": \"$id\""; }

systemctl restart cloister-daemon.service
running || { echo "check-service: the enclave did not survive systemctl restart" >&2; exit 1; }

systemctl stop cloister-daemon.service
if ! kill -0 "$monitor" 2>/dev/null; then
	echo "check-service: systemctl stop ended the enclave's monitor (pid $monitor; KillMode=process expected)" >&2
	exit 1
fi
systemctl start cloister-daemon.service
running || { echo "check-service: the started daemon did not adopt the enclave" >&2; exit 1; }
cloister terminate-enclave --socket "$sock" --enclave-id "$id" >/dev/null
echo "check-service: cloister-daemon.service: notify, restart and stop with a running enclave: ok"
