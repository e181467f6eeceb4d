#!/usr/bin/env bash
# Builds QEMU's `nitro-enclave` machine from Debian's own QEMU source package
# and installs the Linux 6.12 cloud kernel from bookworm-backports, for the
# nitro-enclave cross-check (docs/nitro.md, "Cross-check against QEMU's
# nitro-enclave machine"). scripts/test.sh runs it; it can be run alone.
#
# Debian 12's QEMU (7.2) predates the machine, and the QEMU 10 packages in
# bookworm-backports and trixie are built without it (it needs libcbor). So:
#
#   1. add deb-src entries for bookworm-backports and trixie (deb-src only:
#      no binary package ever comes from trixie), and a deb entry for
#      bookworm-backports (priority 100: nothing is upgraded from it unless
#      asked for by name, as the kernel below is);
#   2. take the QEMU source package from the first suite whose source the
#      mirror serves (bookworm-backports, then trixie: the backports .dsc and
#      .debian.tar.xz have been missing from the mirror while its index still
#      listed them);
#   3. install only what one x86_64 system target with this machine needs
#      (libcbor-dev, libgnutls28-dev, libfdt-dev, libglib2.0-dev, zlib1g-dev,
#      ninja-build, and meson >= 1.5 from bookworm-backports: Debian's "+ds"
#      source drops the meson wheel QEMU bundles);
#   4. configure --target-list=x86_64-softmmu with every optional feature and
#      every device not needed by the machine disabled (the device list is
#      configs/devices/x86_64-softmmu/nitro.mak, written below, as Debian's own
#      microvm build does), build with nice, and install the one binary and
#      the firmware the machine boots (qboot's bios-microvm.bin, from Debian's
#      qemu-system-data) under $QEMU_NITRO_CACHE/<source version>/;
#   5. install the kernel package linux-image-cloud-amd64 depends on in
#      bookworm-backports (6.12: nsm.ko, cuse.ko, the vsock modules), by its
#      versioned name, so the linux-image-cloud-amd64 meta package stays at
#      Debian 12's kernel, which stays the one the microVM tests use;
#      /usr/bin/qemu-system-x86_64 (7.2) is never touched.
#
# Idempotent: when the cached binary for an available source version exists
# and the kernel is installed, it installs and builds nothing. The build's wall
# clock time is written next to the binary (build-seconds) and printed.
#
# Output: the last two lines on stdout are
#   QEMU_NITRO=<path of qemu-system-x86_64>
#   NITRO_KERNEL=<kernel release of the 6.12 kernel>
#
# Environment:
#   QEMU_NITRO_CACHE   cache root (default /var/cache/cloister/qemu-nitro)
#   QEMU_NITRO_SUITES  source suites to try, in order (default "bookworm-backports trixie")
set -euo pipefail

cache_root=${QEMU_NITRO_CACHE:-/var/cache/cloister/qemu-nitro}
read -r -a suites <<< "${QEMU_NITRO_SUITES:-bookworm-backports trixie}"
apt_opts=(-o DPkg::Lock::Timeout=900 -q)

log() { printf '==> build-qemu-nitro: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	echo "build-qemu-nitro: run as root (it installs Debian packages)" >&2
	exit 1
fi

# --- 1. sources ---------------------------------------------------------------
sources_changed=0
add_source() { # file content
	if [ ! -f "$1" ] || [ "$(cat "$1")" != "$2" ]; then
		printf '%s\n' "$2" > "$1"
		sources_changed=1
	fi
}
add_source /etc/apt/sources.list.d/cloister-bookworm-backports.sources "Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
add_source /etc/apt/sources.list.d/cloister-trixie-src.sources "Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
if [ "$sources_changed" = 1 ] || ! apt-cache showsrc qemu >/dev/null 2>&1; then
	log "apt-get update (bookworm-backports, trixie sources)"
	apt-get "${apt_opts[@]}" update -qq
fi

# The source version a suite offers, from its .dsc file name.
source_version() { # suite
	apt-get "${apt_opts[@]}" source --print-uris "qemu/$1" 2>/dev/null |
		sed -n "s/.* qemu_\(.*\)\.dsc .*/\1/p" | head -n 1
}

# --- 5. the 6.12 kernel (first: it does not depend on the build) ---------------
bpo_kernel_release() {
	apt-cache show linux-image-cloud-amd64/bookworm-backports 2>/dev/null |
		sed -n 's/^Depends: linux-image-\([^ ]*\).*/\1/p' | head -n 1
}
kernel_release=$(bpo_kernel_release)
if [ -z "$kernel_release" ]; then
	echo "build-qemu-nitro: bookworm-backports has no linux-image-cloud-amd64; check the mirror" >&2
	exit 1
fi
if [ ! -f "/boot/vmlinuz-$kernel_release" ] || [ ! -f "/lib/modules/$kernel_release/modules.dep" ]; then
	log "installing linux-image-$kernel_release from bookworm-backports"
	DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
		-t bookworm-backports "linux-image-$kernel_release" >/dev/null
fi
for m in drivers/misc/nsm.ko fs/fuse/cuse.ko; do
	if ! compgen -G "/lib/modules/$kernel_release/kernel/$m*" >/dev/null; then
		echo "build-qemu-nitro: $kernel_release has no $m" >&2
		exit 1
	fi
done

# The configure options (the install prefix is added at build time). A cached
# build made with other options (build-config next to the binary) is rebuilt.
# --enable-seccomp: the backend runs QEMU with -sandbox on, like Debian's.
configure_opts=(
	--target-list=x86_64-softmmu
	--without-default-features
	--without-default-devices
	--with-devices-x86_64=nitro
	--enable-tcg --enable-kvm
	--enable-libcbor --enable-gnutls --enable-fdt=system --enable-vhost-user --enable-seccomp
	--audio-drv-list=
	--disable-install-blobs --disable-download --disable-docs --disable-werror
)
devices_mak="CONFIG_PCI_DEVICES=n
CONFIG_NITRO_ENCLAVE=y"
build_config="${configure_opts[*]} | $devices_mak"
cached() { # dir
	[ -x "$1/bin/qemu-system-x86_64" ] && [ "$(cat "$1/build-config" 2>/dev/null)" = "$build_config" ]
}

# --- 2. which source; cached? -------------------------------------------------
declare -A versions=()
for s in "${suites[@]}"; do
	v=$(source_version "$s")
	[ -n "$v" ] && versions[$s]=$v
	if [ -n "$v" ] && cached "$cache_root/$v"; then
		log "cached: $cache_root/$v ($(cat "$cache_root/$v/build-seconds" 2>/dev/null || echo '?') s to build)"
		echo "QEMU_NITRO=$cache_root/$v/bin/qemu-system-x86_64"
		echo "NITRO_KERNEL=$kernel_release"
		exit 0
	fi
done
if [ ${#versions[@]} -eq 0 ]; then
	echo "build-qemu-nitro: no QEMU source package in ${suites[*]}; check the deb-src entries" >&2
	exit 1
fi

# --- 3. build dependencies ----------------------------------------------------
build_packages=(dpkg-dev build-essential pkg-config python3-venv ninja-build
	libcbor-dev libgnutls28-dev libfdt-dev libglib2.0-dev zlib1g-dev libseccomp-dev)
missing=()
for p in "${build_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing build dependencies: ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
meson_ok() { command -v meson >/dev/null && dpkg --compare-versions "$(meson --version)" ge 1.5.0; }
if ! meson_ok; then
	log "installing meson from bookworm-backports (QEMU 10 needs >= 1.5)"
	DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
		-t bookworm-backports meson >/dev/null
fi

# --- 2b. fetch ----------------------------------------------------------------
work=$(mktemp -d /var/tmp/cloister-qemu-nitro.XXXXXX)
trap 'rm -rf "$work"' EXIT
version=""
for s in "${suites[@]}"; do
	v=${versions[$s]:-}
	[ -n "$v" ] || continue
	log "apt-get source qemu/$s ($v)"
	if (cd "$work" && apt-get "${apt_opts[@]}" source -qq "qemu/$s" >/dev/null 2>"$work/source.err"); then
		version=$v
		break
	fi
	log "qemu/$s is not fetchable: $(grep -m1 'E:' "$work/source.err" || tail -n1 "$work/source.err")"
	find "$work" -mindepth 1 -maxdepth 1 ! -name source.err -exec rm -rf {} +
done
if [ -z "$version" ]; then
	echo "build-qemu-nitro: no suite's QEMU source could be fetched (${suites[*]})" >&2
	exit 1
fi
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'qemu-*' | head -n 1)
dest="$cache_root/$version"

# --- 4. configure, build, install ---------------------------------------------
# The devices: the machine and what it selects (microvm, virtio-mmio,
# vhost-user-vsock, virtio-nsm), nothing else.
printf '%s\n' "$devices_mak" > "$src/configs/devices/x86_64-softmmu/nitro.mak"
mkdir -p "$src/b"
log "configure (x86_64-softmmu, nitro-enclave only)"
start=$(date +%s)
(
	cd "$src/b"
	../configure \
		--python=/usr/bin/python3 \
		--prefix="$dest" \
		--firmwarepath="$dest/share/qemu" \
		"${configure_opts[@]}" \
		--with-pkgversion="Debian $version, nitro-enclave build by cloister" \
		>"$work/configure.log" 2>&1
) || { tail -n 40 "$work/configure.log" >&2; exit 1; }
log "build (nice, $(nproc) jobs)"
nice -n 10 ninja -C "$src/b" -j "$(nproc)" qemu-system-x86_64 >"$work/build.log" 2>&1 ||
	{ tail -n 40 "$work/build.log" >&2; exit 1; }
end=$(date +%s)

# Install into a fresh directory, then move it into place: a half-written
# cache entry is never mistaken for a built one.
stage="$cache_root/.stage-$version"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/share/qemu"
install -m 0755 "$src/b/qemu-system-x86_64" "$stage/bin/qemu-system-x86_64"
strip "$stage/bin/qemu-system-x86_64"
# The firmware of microvm and so of nitro-enclave (bios-microvm.bin with ACPI,
# qboot.rom without; in Debian both are qboot), from Debian's qemu-system-data
# (a dependency of qemu-system-x86); and the option ROMs the build made from
# source, if any.
for f in bios-microvm.bin qboot.rom; do
	cp -L "/usr/share/qemu/$f" "$stage/share/qemu/"
done
find "$src/b/pc-bios" -maxdepth 2 -name '*.bin' -exec cp {} "$stage/share/qemu/" \; 2>/dev/null || true
echo $((end - start)) > "$stage/build-seconds"
printf '%s\n' "$version" > "$stage/source-version"
printf '%s\n' "$build_config" > "$stage/build-config"
rm -rf "$dest"
mv "$stage" "$dest"
"$dest/bin/qemu-system-x86_64" -machine help | grep -q '^nitro-enclave ' || {
	echo "build-qemu-nitro: the built QEMU has no nitro-enclave machine" >&2
	exit 1
}
log "built QEMU $version in $((end - start)) s (wall clock, $(nproc) cores): $dest"
echo "QEMU_NITRO=$dest/bin/qemu-system-x86_64"
echo "NITRO_KERNEL=$kernel_release"
