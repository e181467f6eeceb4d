#!/usr/bin/env bash
# The whole test suite, prerequisites included. README.md's second command and
# .ci/run both run exactly this script.
#
# It installs what the tests need (Debian packages, a Linux kernel image for
# the microVM tests, staticcheck) when missing, and builds QEMU's
# nitro-enclave machine with the 6.12 kernel for the cross-check
# (scripts/build-qemu-nitro.sh, cached), so a second run does no installing
# or building. Then it checks formatting, go vet and staticcheck, runs every
# test under the race detector, and runs each fuzz target briefly from its
# seed corpus.
#
# Environment:
#   CI=true          a missing prerequisite fails its test instead of skipping it
#   FUZZTIME=10000x  how long each fuzz target runs (0 skips fuzzing); a count, not a
#                    duration: Go 1.26's fuzz coordinator can fail a duration-bounded run
#                    with a spurious "context deadline exceeded" (golang/go#75804)
#   TEST_TIMEOUT=45m the go test -timeout
#   SKIP_INSTALL=1   do not install or build anything (for machines that are already set up)
#   TEST_PACKAGES    the packages to check and test (default ./...)
#   SKIP_DEMO=1      do not run the main job (scripts/demo.sh) at the end
#   SKIP_PACKAGE=1   do not build, lint and install the Debian package (and run
#                    the main job from the installed binaries)
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

# The enclave tests need root (namespaces, cgroups, QEMU as an unprivileged
# user); re-run as root when started as another user.
if [ "$(id -u)" -ne 0 ]; then
	exec sudo --preserve-env=PATH,GOPATH,GOCACHE,GOMODCACHE,GOFLAGS,GOPROXY,CI,FUZZTIME,TEST_TIMEOUT,SKIP_INSTALL,TEST_PACKAGES,SKIP_DEMO,SKIP_PACKAGE bash "$0" "$@"
fi
FUZZTIME=${FUZZTIME:-10000x}
TEST_TIMEOUT=${TEST_TIMEOUT:-45m}
STATICCHECK_VERSION=v0.8.2
read -r -a pkgs <<< "${TEST_PACKAGES:-./...}"
export PATH="$PATH:$(go env GOPATH)/bin"

step() { printf '\n==> %s\n' "$*"; }
# Checks that cannot run on this machine, reported at the end.
not_run=()

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

# ---------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------
# For the Debian package: dpkg-dev (dpkg-parsechangelog), lintian, man-db
# (the manual pages' groff check), systemd (systemd-analyze), util-linux
# (setpriv), curl and systemd-container (check-service.sh: systemd-nspawn
# boots systemd where it is not PID 1), and the package's own dependencies,
# which dpkg -i does not install.
apt_packages=(qemu-system-x86 postgresql openssl chromium cpio ca-certificates python3 python3-boto3 awscli containerd iproute2 etcd-server
	dpkg-dev lintian man-db systemd systemd-container util-linux curl adduser init-system-helpers)

install_prereqs() {
	local missing=()
	for p in "${apt_packages[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if ! ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1; then
		missing+=(linux-image-cloud-amd64)
	fi
	if [ ${#missing[@]} -gt 0 ]; then
		step "installing Debian packages: ${missing[*]}"
		sudo_ apt-get update -qq
		sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	if ! command -v staticcheck >/dev/null 2>&1; then
		step "installing staticcheck $STATICCHECK_VERSION"
		GOFLAGS= go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
	fi
}

nitro_kver=""
if [ "${SKIP_INSTALL:-}" != 1 ]; then
	install_prereqs
	# QEMU's own Nitro model, built from Debian's QEMU source package (about
	# 5 minutes on 2 cores, once; cached under /var/cache/cloister/qemu-nitro),
	# and the bookworm-backports 6.12 kernel, which has nsm.ko.
	step "QEMU nitro-enclave machine and the 6.12 kernel (scripts/build-qemu-nitro.sh)"
	nitro_out=$(bash scripts/build-qemu-nitro.sh)
	export CLOISTER_TEST_QEMU_NITRO=$(sed -n 's/^QEMU_NITRO=//p' <<< "$nitro_out")
	nitro_kver=$(sed -n 's/^NITRO_KERNEL=//p' <<< "$nitro_out")
fi
if [ -z "$nitro_kver" ]; then
	# Already set up (SKIP_INSTALL=1): the newest installed kernel with nsm.ko.
	for k in $(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V); do
		v=${k#/boot/vmlinuz-}
		if compgen -G "/lib/modules/$v/kernel/drivers/misc/nsm.ko*" >/dev/null; then nitro_kver=$v; fi
	done
fi
if [ -n "$nitro_kver" ]; then
	export CLOISTER_TEST_NITRO_KERNEL="/boot/vmlinuz-$nitro_kver"
	export CLOISTER_TEST_NITRO_MODULES="/lib/modules/$nitro_kver"
fi

# kube-apiserver and kubelet for parent/shim TestKubernetes, built once from
# k8s.io/kubernetes through the module proxy and cached (scripts/build-k8s.sh).
if [ "${SKIP_INSTALL:-}" != 1 ]; then
	step "kube-apiserver and kubelet (scripts/build-k8s.sh)"
	CLOISTER_TEST_K8S_BIN=$(bash scripts/build-k8s.sh | tail -n 1)
	export CLOISTER_TEST_K8S_BIN
elif k8s_bin=$(bash scripts/build-k8s.sh --cached-only 2>/dev/null | tail -n 1); then
	export CLOISTER_TEST_K8S_BIN=$k8s_bin
fi

# The newest Debian cloud kernel on this machine other than the 6.12 one
# above (Debian 12's own), for the microVM tests.
kernel=$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | grep -vxF "/boot/vmlinuz-${nitro_kver:-none}" | sort -V | tail -n 1 || true)
if [ -n "$kernel" ]; then
	kver=${kernel#/boot/vmlinuz-}
	export CLOISTER_TEST_KERNEL="$kernel"
	export CLOISTER_TEST_MODULES="/lib/modules/$kver"
fi

# A throw-away PostgreSQL cluster on loopback for the key service's store tests.
pg_dir=""
cleanup() {
	if [ -n "$pg_dir" ] && [ -d "$pg_dir" ]; then
		as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
		rm -rf "$pg_dir"
	fi
}
trap cleanup EXIT
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ]; then
	step "starting a temporary PostgreSQL on 127.0.0.1"
	pg_dir=$(mktemp -d /tmp/cloister-pg.XXXXXX)
	chmod 0755 "$pg_dir"
	pg_port=$(( 20000 + RANDOM % 20000 ))
	if [ "$(id -u)" -eq 0 ]; then chown postgres "$pg_dir"; fi
	as_postgres "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres >/dev/null
	as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -w -l "$pg_dir/log" \
		-o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$pg_dir -c fsync=on" start >/dev/null
	export CLOISTER_TEST_POSTGRES="postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable"
fi

# ---------------------------------------------------------------------------
# Static checks
# ---------------------------------------------------------------------------
step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

step "go mod tidy -diff"
if ! go mod tidy -diff; then
	echo "go.mod/go.sum are not tidy: run go mod tidy and commit the result"; exit 1
fi

step "go vet"
go vet "${pkgs[@]}"

step "staticcheck"
staticcheck "${pkgs[@]}"

# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------
step "go test -race ${pkgs[*]}"
go test -race -count=1 -timeout "$TEST_TIMEOUT" "${pkgs[@]}"

if [ "$FUZZTIME" != 0 ] && [ "$FUZZTIME" != 0s ] && [ "$FUZZTIME" != 0x ]; then
	step "fuzz targets, $FUZZTIME each"
	# Every func FuzzXxx(f *testing.F) in every package.
	grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' . | sort | while read -r file; do
		pkg="./$(dirname "${file#./}")"
		grep -oE '^func Fuzz[A-Za-z0-9_]+' "$file" | sed 's/^func //' | while read -r target; do
			echo "--- $pkg $target"
			go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg"
		done
	done
fi

if [ "${SKIP_PACKAGE:-}" != 1 ]; then
	step "the Debian package: scripts/build-deb.sh, lintian (errors and warnings fail)"
	pkgdir=$(mktemp -d /tmp/cloister-pkg.XXXXXX)
	deb=$(LINTIAN=1 bash scripts/build-deb.sh "$pkgdir")
	step "dpkg -i $(basename "$deb")"
	dpkg -i "$deb"
	rm -rf "$pkgdir"
	step "systemd-analyze verify of every unit (any message fails)"
	for unit in /lib/systemd/system/cloister-*.service; do
		out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; exit 1; }
		if [ -n "$out" ]; then echo "$unit:"; echo "$out"; exit 1; fi
		echo "$unit: ok"
	done
	cloister --version
	# The daemon unit's CapabilityBoundingSet and NoNewPrivileges, applied
	# with setpriv: the main job's daemon, monitors and enclaves must work
	# within them (systemd itself is not PID 1 on every CI machine).
	caps=$(sed -n 's/^CapabilityBoundingSet=//p' /lib/systemd/system/cloister-daemon.service | tr 'A-Z ' 'a-z,' | sed 's/cap_/+/g')
	confined=(setpriv --no-new-privs --bounding-set "-all,$caps" --inh-caps=-all)
	step "the main job from the installed binaries, sandbox backend, within the daemon unit's capabilities"
	"${confined[@]}" bash scripts/demo.sh --installed
	step "the main job from the installed binaries, QEMU microVM backend, within the daemon unit's capabilities"
	"${confined[@]}" bash scripts/demo.sh --installed --backend qemu
	step "the daemon under systemd (cloister-daemon.service)"
	rc=0
	bash scripts/check-service.sh || rc=$?
	case $rc in
	0) ;;
	77) not_run+=("the daemon under systemd (scripts/check-service.sh): neither systemd as PID 1 nor systemd-nspawn could run it") ;;
	*) exit "$rc" ;;
	esac
fi

if [ "${SKIP_DEMO:-}" != 1 ]; then
	step "the main job (README's first command), sandbox backend"
	bash scripts/demo.sh
	step "the main job, QEMU microVM backend"
	bash scripts/demo.sh --backend qemu
fi

if [ ${#not_run[@]} -gt 0 ]; then
	step "all checks that could run passed; NOT RUN on this machine:"
	printf '  - %s\n' "${not_run[@]}"
else
	step "all checks passed"
fi
