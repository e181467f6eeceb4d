package enclave_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/internal/transport"
	"github.com/cloister/cloister/parent/nsmemu"
)

const testModuleID = "i-0123456789abcdef0-enc0123456789abcdef"

func newModule(t *testing.T, debug bool) (*nsmemu.Emulator, *attest.Issuer) {
	t.Helper()
	iss, err := attest.NewIssuer(attest.IssuerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := nsmemu.New(nsmemu.Config{ModuleID: testModuleID, Issuer: iss, Debug: debug,
		PCRs: map[int][]byte{0: bytes.Repeat([]byte{7}, 48), 3: bytes.Repeat([]byte{3}, 48)}})
	if err != nil {
		t.Fatal(err)
	}
	return e, iss
}

// memTransport calls the emulator directly and counts requests; Close is
// recorded.
type memTransport struct {
	e      *nsmemu.Emulator
	calls  atomic.Int32
	closed atomic.Bool
}

func (m *memTransport) RoundTrip(ctx context.Context, req []byte) ([]byte, error) {
	m.calls.Add(1)
	return m.e.Handle(ctx, req), nil
}

func (m *memTransport) Close() error { m.closed.Store(true); return nil }

func TestSessionAPI(t *testing.T) {
	ctx := context.Background()
	e, iss := newModule(t, false)
	mt := &memTransport{e: e}
	s, err := enclave.OpenSession(ctx, &enclave.SessionConfig{Transport: mt})
	if err != nil {
		t.Fatal(err)
	}
	if s.World() != enclave.WorldAuto {
		t.Errorf("World() = %v with a custom transport", s.World())
	}

	d, err := s.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := enclave.Description{VersionMajor: 1, ModuleID: testModuleID, MaxPCRs: 32,
		LockedPCRs: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, Digest: "SHA384"}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Fatalf("Describe (-want +got):\n%s", diff)
	}

	p, err := s.DescribePCR(ctx, 0)
	if err != nil || !p.Locked || !bytes.Equal(p.Value, bytes.Repeat([]byte{7}, 48)) {
		t.Fatalf("DescribePCR(0) = %+v, %v", p, err)
	}
	_, err = s.ExtendPCR(ctx, 0, []byte("x"))
	var ne *enclave.NSMError
	if !errors.Is(err, enclave.ErrReadOnlyIndex) || !errors.As(err, &ne) || ne.Code.String() != "ReadOnlyIndex" {
		t.Fatalf("ExtendPCR(0) = %v, want ReadOnlyIndex", err)
	}
	if _, err := s.DescribePCR(ctx, 32); !errors.Is(err, enclave.ErrInvalidIndex) {
		t.Fatalf("DescribePCR(32) = %v, want ErrInvalidIndex", err)
	}
	v, err := s.ExtendPCR(ctx, 16, []byte("app-config"))
	if err != nil || len(v) != 48 {
		t.Fatalf("ExtendPCR(16) = %x, %v", v, err)
	}
	if err := s.LockPCR(ctx, 16); err != nil {
		t.Fatal(err)
	}
	if err := s.LockPCR(ctx, 16); !errors.Is(err, enclave.ErrReadOnlyIndex) {
		t.Fatalf("second LockPCR(16) = %v", err)
	}
	if err := s.LockPCRs(ctx, 33); !errors.Is(err, enclave.ErrInvalidIndex) {
		t.Fatalf("LockPCRs(33) = %v", err)
	}
	if err := s.LockPCRs(ctx, 18); err != nil {
		t.Fatal(err)
	}

	now := time.Now()
	doc, err := s.Attest(ctx, enclave.AttestOptions{Nonce: []byte("n0nce"), UserData: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	ver, err := attest.Verify(doc, now, attest.VerifierConfig{Roots: []*x509.Certificate{iss.Root()}, NoAWSRoot: true})
	if err != nil {
		t.Fatalf("attest.Verify: %v", err)
	}
	got := ver.Document()
	if string(got.Nonce) != "n0nce" || string(got.UserData) != "hello" || got.PublicKey != nil {
		t.Fatalf("document fields: nonce %q user_data %q public_key %x", got.Nonce, got.UserData, got.PublicKey)
	}
	if len(got.PCRs) != 18 || !bytes.Equal(got.PCRs[16], v) {
		t.Fatalf("document has %d PCRs (want 18: 0..15, 16, 17), PCR16 %x want %x", len(got.PCRs), got.PCRs[16], v)
	}

	// Limits are checked before sending.
	before := mt.calls.Load()
	_, err = s.Attest(ctx, enclave.AttestOptions{PublicKey: make([]byte, 1025)})
	var le *enclave.LimitError
	if !errors.As(err, &le) || !errors.Is(err, enclave.ErrInputTooLarge) || mt.calls.Load() != before {
		t.Fatalf("1025-byte public key: %v (%d requests sent)", err, mt.calls.Load()-before)
	}

	for _, n := range []int{0, 1, 256, 1000} {
		r, err := s.Random(ctx, n)
		if err != nil || len(r) != n {
			t.Fatalf("Random(%d) = %d bytes, %v", n, len(r), err)
		}
	}
	if _, err := s.Random(ctx, -1); !errors.Is(err, enclave.ErrInvalidArgument) {
		t.Fatalf("Random(-1) = %v", err)
	}
	buf := make([]byte, 600)
	if _, err := io.ReadFull(s.Reader(), buf); err != nil || bytes.Equal(buf, make([]byte, 600)) {
		t.Fatalf("Reader: %v", err)
	}

	if err := s.Close(); err != nil || !mt.closed.Load() {
		t.Fatalf("Close = %v, transport closed %v", err, mt.closed.Load())
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := s.Describe(ctx); !errors.Is(err, enclave.ErrSessionClosed) {
		t.Fatalf("Describe after Close = %v", err)
	}
}

// startSandboxModule serves an emulator where a sandboxed enclave finds the
// parent's NSM port: $CLOISTER_VSOCK_DIR/host/vsock_5133133.
func startSandboxModule(t *testing.T, e *nsmemu.Emulator) string {
	t.Helper()
	dir := t.TempDir()
	path := transport.HostPath(dir, enclave.NSMPort)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return dir
}

func TestSessionSandboxWorld(t *testing.T) {
	ctx := context.Background()
	e, iss := newModule(t, true)
	dir := startSandboxModule(t, e)
	t.Setenv(transport.EnvVsockDir, dir)
	t.Setenv(transport.EnvWorld, "sandbox")

	for _, cfg := range []*enclave.SessionConfig{nil, {World: enclave.WorldSandbox}} {
		s, err := enclave.OpenSession(ctx, cfg)
		if err != nil {
			t.Fatalf("OpenSession(%+v): %v", cfg, err)
		}
		if s.World() != enclave.WorldSandbox {
			t.Fatalf("World() = %v, want sandbox", s.World())
		}
		doc, err := s.Attest(ctx, enclave.AttestOptions{Nonce: []byte{1, 2, 3}})
		if err != nil {
			t.Fatal(err)
		}
		ver, err := attest.Verify(doc, time.Now(), attest.VerifierConfig{Roots: []*x509.Certificate{iss.Root()}, NoAWSRoot: true})
		if err != nil {
			t.Fatal(err)
		}
		// Debug mode: PCR0 reads as zeros, PCR3 keeps its value.
		pcrs := ver.Document().PCRs
		if !bytes.Equal(pcrs[0], make([]byte, 48)) || !bytes.Equal(pcrs[3], bytes.Repeat([]byte{3}, 48)) {
			t.Fatalf("debug document PCR0 %x PCR3 %x", pcrs[0], pcrs[3])
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenSessionFailures(t *testing.T) {
	ctx := context.Background()
	t.Setenv(transport.EnvVsockDir, t.TempDir()) // nobody listens there
	t.Setenv(transport.EnvWorld, "sandbox")
	if _, err := enclave.OpenSession(ctx, nil); !errors.Is(err, enclave.ErrNoListener) {
		t.Fatalf("OpenSession with no emulated module = %v, want ErrNoListener", err)
	}
	if _, err := os.Stat("/dev/nsm"); errors.Is(err, fs.ErrNotExist) {
		if _, err := enclave.OpenSession(ctx, &enclave.SessionConfig{World: enclave.WorldNitro}); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("OpenSession(nitro) without /dev/nsm = %v, want fs.ErrNotExist", err)
		}
	}
	broken := &memTransport{}
	bad := enclave.SessionConfig{Transport: badTransport{broken}}
	if _, err := enclave.OpenSession(ctx, &bad); !errors.Is(err, enclave.ErrInvalidResponse) || broken.closed.Load() {
		t.Fatalf("OpenSession over a garbage transport = %v (closed %v)", err, broken.closed.Load())
	}
}

type badTransport struct{ *memTransport }

func (badTransport) RoundTrip(context.Context, []byte) ([]byte, error) { return []byte{0xff}, nil }
