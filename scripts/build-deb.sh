#!/usr/bin/env bash
# Builds the Debian package of Cloister with dpkg-deb:
#
#   bash scripts/build-deb.sh [OUTDIR]      # default OUTDIR: dist/
#
# It prints the path of the .deb. Everything comes from this repository:
# the binaries (cloister, cloister-monitor, cloister-init and the containerd
# shim; static, CGO_ENABLED=0, version and commit linked in), the
# manual pages and shell completions generated from the command
# definitions, packaging/systemd (units), packaging/etc (/etc/cloister,
# conffiles), packaging/deb (control, maintainer scripts, copyright,
# changelog, lintian overrides) and the documentation.
#
# Environment:
#   VERSION=0.1.0-1   package version (default: the first entry of packaging/deb/changelog)
#   GOARCH=amd64      target architecture (amd64 or arm64)
#   LINTIAN=1         run lintian on the result (fails on any error or warning)
#
# The build is reproducible: file times are clamped to the changelog entry's
# date (SOURCE_DATE_EPOCH), paths are trimmed and no build ID is stored.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
outdir=${1:-$root/dist}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

pkg=packaging
version=${VERSION:-$(dpkg-parsechangelog -l "$pkg/deb/changelog" -S Version)}
upstream=${version%-*}
date=$(dpkg-parsechangelog -l "$pkg/deb/changelog" -S Date)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date -d "$date" +%s)}
mandate=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
goarch=${GOARCH:-$(go env GOARCH)}
case "$goarch" in
amd64 | arm64) arch=$goarch ;;
*) echo "build-deb: unsupported GOARCH $goarch (amd64 or arm64)" >&2; exit 1 ;;
esac
commit=unknown
if git rev-parse --git-dir >/dev/null 2>&1; then
	commit=$(git rev-parse HEAD)
	if ! git diff --quiet HEAD -- 2>/dev/null; then
		commit="$commit-dirty"
	fi
fi

stage=$(mktemp -d /tmp/cloister-deb.XXXXXX)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

echo "build-deb: cloister $version ($arch, commit $commit)" >&2

# --- binaries -------------------------------------------------------------
bi=github.com/cloister/cloister/internal/buildinfo
ldflags="-s -w -buildid= -X $bi.version=$upstream -X $bi.commit=$commit"
build() { # OUT PKG
	CGO_ENABLED=0 GOOS=linux GOARCH=$goarch go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$stage/$1" "$2"
}
install -d -m 0755 "$stage/usr/bin" "$stage/usr/lib/cloister"
build usr/bin/cloister ./cmd/cloister
build usr/lib/cloister/cloister-monitor ./cmd/cloister-monitor
build usr/lib/cloister/cloister-init ./cmd/cloister-init
build usr/bin/containerd-shim-cloister-v2 ./cmd/containerd-shim-cloister-v2
chmod 0755 "$stage/usr/bin/"* "$stage/usr/lib/cloister/"*

# The host's own binary generates what is architecture-independent.
hostbin=$stage/usr/bin/cloister
if [ "$goarch" != "$(go env GOHOSTARCH)" ]; then
	hostbin=$(mktemp -d)/cloister
	CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$hostbin" ./cmd/cloister
fi

# --- manual pages and shell completion -------------------------------------
man=$stage/usr/share/man/man1
go run ./internal/tools/gendocs -man "$man" -man-source "cloister $upstream" -man-date "$mandate"
sed -e "s/@DATE@/$mandate/" -e "s/@SOURCE@/cloister $upstream/" "$pkg/man/containerd-shim-cloister-v2.1" > "$man/containerd-shim-cloister-v2.1"
gzip -9n "$man"/*.1

install -d -m 0755 "$stage/usr/share/bash-completion/completions" \
	"$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$hostbin" completion bash > "$stage/usr/share/bash-completion/completions/cloister"
"$hostbin" completion zsh > "$stage/usr/share/zsh/vendor-completions/_cloister"
"$hostbin" completion fish > "$stage/usr/share/fish/vendor_completions.d/cloister.fish"

# --- systemd units and configuration ---------------------------------------
install -d -m 0755 "$stage/lib/systemd/system" "$stage/etc/cloister"
install -m 0644 "$pkg"/systemd/*.service "$stage/lib/systemd/system/"
install -m 0644 "$pkg"/etc/* "$stage/etc/cloister/"

# --- documentation ---------------------------------------------------------
doc=$stage/usr/share/doc/cloister
install -d -m 0755 "$doc" "$doc/examples" "$doc/docs"
install -m 0644 "$pkg/deb/copyright" "$doc/copyright"
gzip -9nc "$pkg/deb/changelog" > "$doc/changelog.Debian.gz"
install -m 0644 README.md "$doc/"
install -m 0644 docs/*.md docs/*.yaml "$doc/docs/"
install -m 0644 "$pkg/systemd/delegate-subgroup.conf" "$doc/examples/"
# The Go modules linked into the binaries, each with its licence text.
{
	echo "Go modules statically linked into cloister, cloister-monitor, cloister-init and containerd-shim-cloister-v2"
	echo
	echo "== Go standard library ($(go env GOVERSION))"
	cat "$(go env GOROOT)/LICENSE"
	CGO_ENABLED=0 go list -deps -f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}' \
		./cmd/cloister ./cmd/cloister-monitor ./cmd/cloister-init ./cmd/containerd-shim-cloister-v2 | sort -u |
		while read -r path ver dir; do
			echo
			echo "== $path $ver"
			lic=$(find "$dir" -maxdepth 1 -type f \( -iname 'LICENSE*' -o -iname 'COPYING*' -o -iname 'NOTICE*' \) | sort)
			if [ -z "$lic" ]; then
				echo "(no licence file in the module)"
			fi
			for f in $lic; do cat "$f"; echo; done
		done
} | gzip -9n > "$doc/go-modules.txt.gz"
# Policy 12.3: documentation larger than 4 kB is compressed.
find "$doc" -maxdepth 2 -type f -size +4k \( -name '*.md' -o -name '*.yaml' \) -exec gzip -9n {} +

install -d -m 0755 "$stage/usr/share/lintian/overrides"
install -m 0644 "$pkg/deb/lintian-overrides" "$stage/usr/share/lintian/overrides/cloister"

# --- control ---------------------------------------------------------------
install -d -m 0755 "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" "$pkg/deb/control.in" > "$stage/DEBIAN/control"
install -m 0755 "$pkg/deb/postinst" "$pkg/deb/prerm" "$pkg/deb/postrm" "$stage/DEBIAN/"
(cd "$stage" && find etc -type f | sort | sed 's|^|/|') > "$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
find "$stage" -type d -exec chmod 0755 {} +

deb=$outdir/cloister_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
if [ "${LINTIAN:-}" = 1 ]; then
	# Errors and warnings fail; every override is explained in
	# packaging/deb/lintian-overrides.
	lintian --fail-on error,warning --display-info "$deb" >&2
fi
echo "$deb"
