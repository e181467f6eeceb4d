package enclave

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/internal/transport"
)

// TestSessionTransportByWorld pins which worlds reach the module through
// /dev/nsm: with a /dev/nsm that is not a security module (a plain file,
// on which the ioctl fails), every world fails in the ioctl. Without
// /dev/nsm a sandbox dials the emulated module instead (nobody listens in
// this test; a microVM would too, over the host's real AF_VSOCK, which
// tests never use); Nitro fails.
func TestSessionTransportByWorld(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "nsm")
	if err := os.WriteFile(fake, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	old := nsmDevicePath
	t.Cleanup(func() { nsmDevicePath = old })
	t.Setenv(transport.EnvVsockDir, t.TempDir())

	tests := []struct {
		world  World
		device string
		want   error
	}{
		{WorldNitro, fake, nsm.ErrInternalError},
		{WorldMicroVM, fake, nsm.ErrInternalError},
		{WorldSandbox, fake, nsm.ErrInternalError},
		{WorldNitro, fake + ".absent", os.ErrNotExist},
		{WorldSandbox, fake + ".absent", ErrNoListener},
	}
	for _, tt := range tests {
		nsmDevicePath = tt.device
		_, err := OpenSession(context.Background(), &SessionConfig{World: tt.world})
		if !errors.Is(err, tt.want) {
			t.Errorf("OpenSession(%v) with %s: %v, want %v", tt.world, filepath.Base(tt.device), err, tt.want)
		}
	}
}
