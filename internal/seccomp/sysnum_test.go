//go:build linux && (amd64 || arm64)

package seccomp

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestNativeSyscallTable checks the hand-written table of the running
// architecture against golang.org/x/sys/unix's generated numbers.
func TestNativeSyscallTable(t *testing.T) {
	arch, err := NativeArch()
	if err != nil {
		t.Fatal(err)
	}
	if arch != nativeArch {
		t.Fatalf("NativeArch() = %s, want %s", arch.Name, nativeArch.Name)
	}
	if diff := cmp.Diff(nativeNums, arch.nums); diff != "" {
		t.Errorf("syscall table differs from x/sys/unix (-unix +table):\n%s", diff)
	}
}
