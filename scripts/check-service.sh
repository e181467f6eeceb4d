#!/usr/bin/env bash
# Runs the installed daemon under systemd (cloister-daemon.service) and
# checks what the unit promises: it becomes active only once it serves its
# API (Type=notify), the enclaves' cgroups go beneath the unit's delegated
# cgroup (Delegate=yes), an enclave launched through it survives
# "systemctl restart" and is adopted, and "systemctl stop" leaves it running
# (KillMode=process) until it is terminated. scripts/test.sh runs it after
# installing the package.
#
# Where systemd is PID 1 it checks the host's own unit. Elsewhere
# (containers, Firecracker VMs such as this repository's CI machine) it
# boots systemd as PID 1 in a throw-away systemd-nspawn container (Debian
# package systemd-container) made of this host's own file system: read-only
# below a tmpfs overlay (--volatile=overlay), so the installed package and
# its unit are the host's and nothing the container writes reaches the
# disk; a private network (loopback only); systemd booted to basic.target
# (nothing else starts); the container's cgroups beneath a group of its own
# in every hierarchy, removed afterwards. Three departures from nspawn's
# defaults make the container look like a host to the unit:
#   - the v1 controller hierarchies (hybrid layout) are mounted writable, as
#     on a host, before systemd starts (nspawn mounts them read-only, which
#     leaves systemd and the daemon no v1 controller to delegate or use);
#   - pidfd_getfd is allowed (nspawn's system-call filter lacks it; the
#     sandbox's supervisor needs it to answer /dev/nsm);
#   - the unit's CapabilityBoundingSet is granted (nspawn's default drops
#     CAP_IPC_LOCK and CAP_SYS_RESOURCE).
# When neither is possible it says why and exits 77 (the "not run" status
# of automake), which scripts/test.sh reports as NOT RUN; with CI=true it
# fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."

unit=cloister-daemon.service
sock=/run/cloister/cloisterd.sock

not_run() {
	if [ "${CI:-}" = true ]; then
		echo "check-service: FAILED (CI=true, the check must run): $*" >&2
		exit 1
	fi
	echo "check-service: NOT RUN: $*"
	exit 77
}
fail() {
	echo "check-service: $*" >&2
	exit 1
}

work=$(mktemp -d /tmp/cloister-service.XXXXXX)
chmod 0755 "$work"
run=()         # runs a command beside the unit's systemd (in the container)
nspawn_pid=''  # the container's systemd-nspawn
root=''        # the container's root mount point (mounted in its namespace only)
made_systemd_dir=''
id=''
cleanup() {
	set +e
	[ -n "$id" ] && "${run[@]}" cloister terminate-enclave --socket "$sock" --enclave-id "$id" >/dev/null 2>&1
	if [ -n "$nspawn_pid" ]; then
		# SIGTERM: systemd in the container shuts down, killing what is left.
		kill -TERM "$nspawn_pid" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$nspawn_pid" 2>/dev/null
		wait "$nspawn_pid" 2>/dev/null
	fi
	if [ -f "$work/cgroups" ]; then
		while read -r d; do
			[ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
		done < "$work/cgroups"
	fi
	[ -n "$root" ] && rmdir "$root"
	[ -n "$made_systemd_dir" ] && rmdir /run/systemd 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

# The enclave, built here (also for the container, which sees $work).
mkdir -p "$work/rootfs/bin"
CGO_ENABLED=0 go build -o "$work/rootfs/bin/hello-enclave" ./examples/hello/enclave
cloister build-enclave --rootfs "$work/rootfs" --cmd /bin/hello-enclave --output-file "$work/hello.eif" >/dev/null 2>&1

boot_container() {
	local pid1 caps c leader state
	pid1=$(tr '\0' ' ' < /proc/1/cmdline | cut -c1-60)
	command -v systemd-nspawn >/dev/null ||
		not_run "systemd is not PID 1 on this machine (PID 1 is: ${pid1:-unknown}) and systemd-nspawn" \
			"(Debian package systemd-container) is not installed: $unit was not run under a service manager"
	[ -f "/lib/systemd/system/$unit" ] || fail "/lib/systemd/system/$unit is missing: install the package first"
	caps=$(sed -n 's/^CapabilityBoundingSet=//p' "/lib/systemd/system/$unit" | tr ' ' ',')
	if [ ! -d /run/systemd ]; then
		mkdir -p /run/systemd
		made_systemd_dir=1
	fi
	root=$(mktemp -d /tmp/cloister-service-root.XXXXXX)
	# In a mount namespace of its own: a group of its own in every cgroup
	# hierarchy (the container's cgroup namespace is rooted there), nspawn's
	# state on a tmpfs over /run/systemd (nothing of it stays on the host),
	# and / bound without its submounts (nspawn refuses "/" itself, and a
	# pre-populated /dev).
	# shellcheck disable=SC2016 # expanded by the inner shells
	unshare --mount --propagation private -- bash -euc '
		work=$1 root=$2; shift 2
		groups=$(cat /proc/self/cgroup)
		while IFS=: read -r _ ctrl path; do
			if [ -z "$ctrl" ]; then
				mnt=$(findmnt -rn -t cgroup2 -o TARGET | head -n1)
			else
				mnt=$(findmnt -rn -t cgroup -o TARGET,OPTIONS | awk -v c="${ctrl%%,*}" \
					"{ n = split(\$2, o, \",\"); for (i = 1; i <= n; i++) if (o[i] == c) { print \$1; exit } }")
			fi
			[ -n "$mnt" ] || continue
			d="$mnt${path%/}/cloister-check-service.$$"
			mkdir "$d"
			echo "$d" >> "$work/cgroups"
			for f in cpuset.cpus cpuset.mems; do # empty in a new v1 cpuset group
				[ -f "$d/$f" ] && cat "$d/../$f" > "$d/$f"
			done
			echo $$ > "$d/cgroup.procs"
		done <<< "$groups"
		mount -t tmpfs tmpfs /run/systemd
		mount --bind / "$root"
		exec systemd-nspawn "$@"
	' bash "$work" "$root" \
		--quiet --directory="$root" --volatile=overlay --register=no --keep-unit \
		--private-network --machine="cloister-check-$$" --console=passive \
		--kill-signal=SIGRTMIN+3 --capability="$caps" --system-call-filter=pidfd_getfd \
		--bind-ro="$work" \
		-- /bin/sh -c 'for m in $(findmnt -rn -t cgroup -o TARGET); do mount -o remount,bind,rw "$m"; done
			exec /lib/systemd/systemd systemd.unit=basic.target' \
		> "$work/nspawn.log" 2>&1 &
	nspawn_pid=$!
	# The container's PID 1 is nspawn's child once it is systemd.
	leader=''
	for _ in $(seq 300); do
		kill -0 "$nspawn_pid" 2>/dev/null || break
		for c in $(pgrep -P "$nspawn_pid"); do
			[ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && leader=$c
		done
		[ -n "$leader" ] && break
		sleep 0.1
	done
	[ -n "$leader" ] || not_run "systemd is not PID 1 on this machine (PID 1 is: ${pid1:-unknown}) and systemd-nspawn" \
		"could not boot it in a container: $(tail -n 5 "$work/nspawn.log" | tr '\n' ' ')"
	run=(nsenter --target "$leader" --all --)
	# systemd's bus appears a moment after it starts.
	for _ in $(seq 300); do
		state=$(timeout 30 "${run[@]}" systemctl is-system-running --wait 2>&1 || true)
		case $state in "Failed to connect to bus"*) sleep 0.1 ;; *) break ;; esac
	done
	case $state in
	running | degraded) ;;
	*) not_run "systemd booted in a container but did not come up (state: $state): $(tail -n 5 "$work/nspawn.log" | tr '\n' ' ')" ;;
	esac
	echo "check-service: systemd is not PID 1 here; booted it as PID 1 in a systemd-nspawn container of this host's file system (state: $state)"
}

if [ ! -d /run/systemd/system ]; then
	t0=$(date +%s%N)
	boot_container
	echo "check-service: container booted in $((($(date +%s%N) - t0) / 1000000)) ms"
fi

ctl() { "${run[@]}" systemctl "$@"; }
cl() { "${run[@]}" cloister "$@"; }
prop() { ctl show -p "$1" --value "$unit"; }

ctl daemon-reload
ctl restart "$unit"
# Type=notify: "restart" returns once the daemon sent READY=1; active
# (running) with a main process is what that promises.
[ "$(prop Type)" = notify ] || fail "$unit is not Type=notify: $(prop Type)"
[ "$(prop ActiveState)/$(prop SubState)" = active/running ] ||
	fail "$unit is not active after start: $(ctl show -p ActiveState,SubState,Result "$unit" | tr '\n' ' ')"
main=$(prop MainPID)
[ "$main" -gt 0 ] || fail "$unit has no main process"
cg=$(prop ControlGroup)
echo "check-service: $unit active (running), MainPID=$main, ControlGroup=$cg, StatusText=$(prop StatusText)"
cl describe-enclaves --socket "$sock" >/dev/null
"${run[@]}" curl -fsS --unix-socket "$sock" http://localhost/healthz >/dev/null

out=$(cl run-enclave --socket "$sock" --eif-path "$work/hello.eif" --memory 128 --cpu-count 1 --enclave-name svc-check)
id=$(sed -n 's/.*"EnclaveID": "\(.*\)".*/\1/p' <<< "$out")
enclave=$(sed -n 's/.*"ProcessID": \([0-9]*\).*/\1/p' <<< "$out")
[ -n "$id" ] && [ -n "$enclave" ] || fail "run-enclave gave no EnclaveID or ProcessID: $out"

running() { cl describe-enclaves --socket "$sock" | grep -q "\"EnclaveID\": \"$id\""; }
sleep 0.5
running || fail "the enclave ended at once: $(ctl status --no-pager -n 20 "$unit")"

# Delegate=yes: the enclave's groups are beneath the unit's cgroup, in
# every hierarchy where it is not in the root group. On a pure cgroup v2
# host that needs DelegateSubgroup=supervisor (systemd >= 254), see the unit.
groups=$("${run[@]}" cat "/proc/$enclave/cgroup")
own=$("${run[@]}" cat "/proc/$main/cgroup" | sed -n 's/^0:://p')
if [ "$("${run[@]}" stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] || [ "${own##*/}" = supervisor ]; then
	grep -q ":$cg/enclaves/$id\$" <<< "$groups" ||
		fail "the enclave's cgroups are not in $cg/enclaves/$id:"$'\n'"$groups"
	outside=$(awk -F: -v cg="$cg" '$3 != "/" && $3 != cg && index($3, cg "/") != 1' <<< "$groups")
	[ -z "$outside" ] || fail "enclave cgroups outside the unit's delegated cgroup:"$'\n'"$outside"
	echo "check-service: the enclave's cgroups are beneath the unit's: $cg/enclaves/$id"
else
	echo "check-service: cgroup v2 without DelegateSubgroup=supervisor: the enclave's cgroups are not delegated (see the unit):"$'\n'"$groups"
fi

ctl restart "$unit"
running || fail "the enclave did not survive systemctl restart"

ctl stop "$unit"
[ "$(prop ActiveState)" = inactive ] || fail "$unit is $(prop ActiveState) after stop"
"${run[@]}" kill -0 "$enclave" 2>/dev/null ||
	fail "systemctl stop ended the enclave (pid $enclave; KillMode=process expected)"
ctl start "$unit"
running || fail "the started daemon did not adopt the enclave"
cl terminate-enclave --socket "$sock" --enclave-id "$id" >/dev/null
id=''
echo "check-service: $unit: notify, delegated cgroups, restart and stop with a running enclave: ok"
