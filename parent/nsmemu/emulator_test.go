package nsmemu_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/parent/nsmemu"
)

const moduleID = "i-0123456789abcdef0-enc0123456789abcdef"

var testIssuer = sync.OnceValues(func() (*attest.Issuer, error) { return attest.NewIssuer(attest.IssuerConfig{}) })

func issuer(t testing.TB) *attest.Issuer {
	t.Helper()
	iss, err := testIssuer()
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func newEmulator(t testing.TB, cfg nsmemu.Config) *nsmemu.Emulator {
	t.Helper()
	if cfg.Issuer == nil {
		cfg.Issuer = issuer(t)
	}
	if cfg.ModuleID == "" {
		cfg.ModuleID = moduleID
	}
	e, err := nsmemu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

type namedClient struct {
	name string
	c    *nsm.Client
}

// transports returns the ways a client reaches an emulator, each with a
// fresh emulator from newE: in memory (Client → Handle) and over the
// framed stream protocol on a real Unix socket (Client → Stream → Serve →
// Handle). The same Client code talks to /dev/nsm through nsm.Device (see
// internal/nsm's device tests, which also run against this emulator).
func transports(t *testing.T, newE func() *nsmemu.Emulator) []namedClient {
	t.Helper()
	e := newE()
	mem := nsm.TransportFunc(func(ctx context.Context, req []byte) ([]byte, error) { return e.Handle(ctx, req), nil })

	path := filepath.Join(t.TempDir(), "vsock_5133133")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	e2 := newE()
	go func() { done <- e2.Serve(ctx, l) }()
	s := nsm.NewStream(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	})
	t.Cleanup(func() {
		s.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return []namedClient{{"memory", nsm.NewClient(mem)}, {"stream", nsm.NewClient(s)}}
}

func pcrValue(b byte) []byte { return bytes.Repeat([]byte{b}, 48) }

func extend(old, data []byte) []byte {
	h := sha512.Sum384(append(slices.Clone(old), data...))
	return h[:]
}

func wantCode(t *testing.T, what string, err error, code nsm.ErrorCode) {
	t.Helper()
	var me *nsm.Error
	if !errors.As(err, &me) || me.Code != code {
		t.Fatalf("%s: error = %v, want module error %s", what, err, code)
	}
}

func TestPCRRules(t *testing.T) {
	boot := map[int][]byte{0: pcrValue(0xa0), 1: pcrValue(0xa1), 2: pcrValue(0xa2), 3: pcrValue(0xa3), 4: pcrValue(0xa4), 8: pcrValue(0xa8)}
	for _, tr := range transports(t, func() *nsmemu.Emulator { return newEmulator(t, nsmemu.Config{PCRs: boot}) }) {
		c := tr.c
		t.Run(tr.name, func(t *testing.T) {
			ctx := context.Background()
			d, err := c.DescribeNSM(ctx)
			if err != nil {
				t.Fatal(err)
			}
			wantDesc := nsm.DescribeNSMResponse{VersionMajor: 1, VersionMinor: 0, VersionPatch: 0, ModuleID: moduleID,
				MaxPCRs: 32, LockedPCRs: []uint16{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, Digest: nsm.DigestSHA384}
			if diff := cmp.Diff(wantDesc, d); diff != "" {
				t.Fatalf("DescribeNSM (-want +got):\n%s", diff)
			}
			for i := range 16 {
				p, err := c.DescribePCR(ctx, i)
				want := boot[i]
				if want == nil {
					want = make([]byte, 48)
				}
				if err != nil || !p.Locked || !bytes.Equal(p.Value, want) {
					t.Fatalf("DescribePCR(%d) = %+v, %v; want locked %x", i, p, err, want)
				}
				_, err = c.ExtendPCR(ctx, i, []byte("x"))
				wantCode(t, "ExtendPCR on a boot PCR", err, nsm.ReadOnlyIndex)
				wantCode(t, "LockPCR on a boot PCR", c.LockPCR(ctx, i), nsm.ReadOnlyIndex)
			}
			for _, i := range []int{32, 33, 255, 65535} {
				_, err := c.DescribePCR(ctx, i)
				wantCode(t, "DescribePCR out of range", err, nsm.InvalidIndex)
				_, err = c.ExtendPCR(ctx, i, nil)
				wantCode(t, "ExtendPCR out of range", err, nsm.InvalidIndex)
				wantCode(t, "LockPCR out of range", c.LockPCR(ctx, i), nsm.InvalidIndex)
			}
			// A user PCR: zero, unlocked; extend twice; lock; then read-only.
			const u = 16
			p, err := c.DescribePCR(ctx, u)
			if err != nil || p.Locked || !bytes.Equal(p.Value, make([]byte, 48)) {
				t.Fatalf("DescribePCR(%d) = %+v, %v; want unlocked zeros", u, p, err)
			}
			v1, err := c.ExtendPCR(ctx, u, []byte("hello"))
			if want := extend(make([]byte, 48), []byte("hello")); err != nil || !bytes.Equal(v1, want) {
				t.Fatalf("ExtendPCR = %x, %v; want %x", v1, err, want)
			}
			v2, err := c.ExtendPCR(ctx, u, nil)
			if want := extend(v1, nil); err != nil || !bytes.Equal(v2, want) {
				t.Fatalf("ExtendPCR(empty) = %x, %v; want %x", v2, err, want)
			}
			if err := c.LockPCR(ctx, u); err != nil {
				t.Fatalf("LockPCR(%d): %v", u, err)
			}
			wantCode(t, "LockPCR twice", c.LockPCR(ctx, u), nsm.ReadOnlyIndex)
			_, err = c.ExtendPCR(ctx, u, []byte("x"))
			wantCode(t, "ExtendPCR on a locked user PCR", err, nsm.ReadOnlyIndex)
			p, err = c.DescribePCR(ctx, u)
			if err != nil || !p.Locked || !bytes.Equal(p.Value, v2) {
				t.Fatalf("DescribePCR after lock = %+v, %v", p, err)
			}
			wantCode(t, "LockPCRs(33)", c.LockPCRs(ctx, 33), nsm.InvalidIndex)
			wantCode(t, "LockPCRs(65535)", c.LockPCRs(ctx, 65535), nsm.InvalidIndex)
			if err := c.LockPCRs(ctx, 0); err != nil {
				t.Fatalf("LockPCRs(0): %v", err)
			}
		})
	}
}

func TestLockPCRs(t *testing.T) {
	ctx := context.Background()
	c := transports(t, func() *nsmemu.Emulator { return newEmulator(t, nsmemu.Config{}) })[1].c
	if _, err := c.ExtendPCR(ctx, 25, []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := c.LockPCRs(ctx, 20); err != nil {
		t.Fatal(err)
	}
	d, err := c.DescribeNSM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]uint16, 20)
	for i := range want {
		want[i] = uint16(i)
	}
	if diff := cmp.Diff(want, d.LockedPCRs); diff != "" {
		t.Fatalf("locked PCRs after LockPCRs(20) (-want +got):\n%s", diff)
	}
	if _, err := c.ExtendPCR(ctx, 19, []byte("a")); err == nil {
		t.Fatal("extended PCR19 after LockPCRs(20)")
	}
	if _, err := c.ExtendPCR(ctx, 20, []byte("a")); err != nil {
		t.Fatalf("ExtendPCR(20) after LockPCRs(20): %v", err)
	}
	if err := c.LockPCRs(ctx, 32); err != nil {
		t.Fatal(err)
	}
	for i := range 32 {
		if p, err := c.DescribePCR(ctx, i); err != nil || !p.Locked {
			t.Fatalf("PCR%d after LockPCRs(32): %+v, %v", i, p, err)
		}
	}
}

// verify checks doc with attest.Verify under the issuer root at `at` and
// returns the document.
func verify(t *testing.T, doc []byte, at time.Time) attest.Document {
	t.Helper()
	v, err := attest.Verify(doc, at, attest.VerifierConfig{Roots: []*x509.Certificate{issuer(t).Root()}, NoAWSRoot: true})
	if err != nil {
		t.Fatalf("attest.Verify: %v", err)
	}
	return v.Document()
}

func TestAttestation(t *testing.T) {
	now := time.Now().Truncate(time.Millisecond)
	clock := func() time.Time { return now }
	boot := map[int][]byte{0: pcrValue(0xa0), 1: pcrValue(0xa1), 2: pcrValue(0xa2), 3: pcrValue(0xa3), 4: pcrValue(0xa4), 8: pcrValue(0xa8)}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	for _, debug := range []bool{false, true} {
		newE := func() *nsmemu.Emulator {
			return newEmulator(t, nsmemu.Config{PCRs: boot, Debug: debug, Clock: clock})
		}
		for _, tr := range transports(t, newE) {
			c := tr.c
			t.Run(map[bool]string{false: "production/", true: "debug/"}[debug]+tr.name, func(t *testing.T) {
				ctx := context.Background()
				wantPCRs := map[int][]byte{}
				for i := range 16 {
					wantPCRs[i] = make([]byte, 48)
					if v, ok := boot[i]; ok && !(debug && (i == 0 || i == 1 || i == 2 || i == 8)) {
						wantPCRs[i] = v
					}
				}
				cases := []struct {
					name                    string
					userData, nonce, pubKey []byte
				}{
					{"none", nil, nil, nil},
					{"all", []byte("user"), []byte("nonce-123"), spki},
					{"empty values", []byte{}, []byte{}, nil},
					{"1024 each", bytes.Repeat([]byte{1}, 1024), bytes.Repeat([]byte{2}, 1024), bytes.Repeat([]byte{3}, 1024)},
				}
				for _, tc := range cases {
					doc, err := c.Attestation(ctx, tc.userData, tc.nonce, tc.pubKey)
					if err != nil {
						t.Fatalf("%s: Attestation: %v", tc.name, err)
					}
					got := verify(t, doc, now)
					if got.ModuleID != moduleID || got.Digest != "SHA384" || !got.Timestamp.Equal(now) {
						t.Fatalf("%s: module_id %q digest %q timestamp %v", tc.name, got.ModuleID, got.Digest, got.Timestamp)
					}
					if diff := cmp.Diff(wantPCRs, got.PCRs); diff != "" {
						t.Fatalf("%s: pcrs (-want +got):\n%s", tc.name, diff)
					}
					// Empty and absent both read back as nil from the
					// document parser; compare contents.
					if !bytes.Equal(got.UserData, tc.userData) || !bytes.Equal(got.Nonce, tc.nonce) || !bytes.Equal(got.PublicKey, tc.pubKey) {
						t.Fatalf("%s: fields not echoed: user_data %x nonce %x public_key %x", tc.name, got.UserData, got.Nonce, got.PublicKey)
					}
				}
				// DescribePCR agrees with the document.
				for i, want := range wantPCRs {
					if p, err := c.DescribePCR(ctx, i); err != nil || !bytes.Equal(p.Value, want) {
						t.Fatalf("DescribePCR(%d) = %x, %v; want %x", i, p.Value, err, want)
					}
				}
			})
		}
	}
}

// A user PCR appears in documents once, and only once, it is locked.
func TestAttestationLockedUserPCRs(t *testing.T) {
	ctx := context.Background()
	now := time.Now().Truncate(time.Millisecond)
	c := transports(t, func() *nsmemu.Emulator {
		return newEmulator(t, nsmemu.Config{Clock: func() time.Time { return now }})
	})[0].c
	v, err := c.ExtendPCR(ctx, 23, []byte("app"))
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := c.Attestation(ctx, nil, nil, nil)
	if _, ok := verify(t, doc, now).PCRs[23]; ok {
		t.Fatal("unlocked PCR23 is in the document")
	}
	if err := c.LockPCR(ctx, 23); err != nil {
		t.Fatal(err)
	}
	doc, _ = c.Attestation(ctx, nil, nil, nil)
	pcrs := verify(t, doc, now).PCRs
	if len(pcrs) != 17 || !bytes.Equal(pcrs[23], v) {
		t.Fatalf("document has %d PCRs, PCR23 = %x; want 17 with PCR23 = %x", len(pcrs), pcrs[23], v)
	}
}

// Limits: the client refuses before sending; a raw oversize request that
// bypasses the client gets InputTooLarge from the emulator itself.
func TestAttestationLimits(t *testing.T) {
	ctx := context.Background()
	e := newEmulator(t, nsmemu.Config{})
	calls := 0
	c := nsm.NewClient(nsm.TransportFunc(func(ctx context.Context, req []byte) ([]byte, error) {
		calls++
		return e.Handle(ctx, req), nil
	}))
	_, err := c.Attestation(ctx, nil, make([]byte, 1025), nil)
	var le *nsm.LimitError
	if !errors.As(err, &le) || calls != 0 {
		t.Fatalf("1025-byte nonce: %v after %d calls, want a LimitError before sending", err, calls)
	}
	raw, _ := nsm.EncodeRequest(nsm.AttestationRequest{Nonce: make([]byte, 1025)})
	resp, err := nsm.DecodeResponse(e.Handle(ctx, raw))
	if err != nil || resp != (nsm.ErrorResponse{Code: nsm.InputTooLarge}) {
		t.Fatalf("raw 1025-byte nonce → %#v, %v; want InputTooLarge", resp, err)
	}
}

func TestHandleRaw(t *testing.T) {
	ctx := context.Background()
	e := newEmulator(t, nsmemu.Config{})
	lockReq, _ := nsm.EncodeRequest(nsm.LockPCRRequest{Index: 16})
	cases := []struct {
		name string
		req  []byte
		want nsm.Response
	}{
		{"garbage", []byte{0xff, 0x00}, nsm.ErrorResponse{Code: nsm.InvalidOperation}},
		{"empty", nil, nsm.ErrorResponse{Code: nsm.InvalidOperation}},
		{"response as request", []byte("\x67LockPCR"), nsm.ErrorResponse{Code: nsm.InvalidOperation}},
		{"trailing bytes", append(slices.Clone(lockReq), 0), nsm.ErrorResponse{Code: nsm.InvalidOperation}},
		{"over 4 KiB", make([]byte, 4097), nsm.ErrorResponse{Code: nsm.InputTooLarge}},
		{"valid", lockReq, nsm.LockPCRResponse{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nsm.DecodeResponse(e.Handle(ctx, tc.req))
			if err != nil {
				t.Fatalf("Handle returned undecodable bytes: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestGetRandom(t *testing.T) {
	ctx := context.Background()
	src := bytes.Repeat([]byte{1, 2, 3, 4}, 128)
	c := nsm.NewClient(nsm.TransportFunc(func(ctx context.Context, req []byte) ([]byte, error) {
		return newEmulator(t, nsmemu.Config{Rand: bytes.NewReader(src)}).Handle(ctx, req), nil
	}))
	r, err := c.GetRandom(ctx)
	if err != nil || !bytes.Equal(r, src[:256]) {
		t.Fatalf("GetRandom = %x, %v; want the first 256 bytes of Rand", r, err)
	}
	bad := newEmulator(t, nsmemu.Config{Rand: iotest.ErrReader(io.ErrClosedPipe)})
	_, err = nsm.NewClient(nsm.TransportFunc(func(ctx context.Context, req []byte) ([]byte, error) {
		return bad.Handle(ctx, req), nil
	})).GetRandom(ctx)
	wantCode(t, "GetRandom with a failing Rand", err, nsm.InternalError)
}

func TestNewValidation(t *testing.T) {
	iss := issuer(t)
	cases := []struct {
		name string
		cfg  nsmemu.Config
	}{
		{"no module id", nsmemu.Config{Issuer: iss}},
		{"long module id", nsmemu.Config{Issuer: iss, ModuleID: string(make([]byte, 101))}},
		{"no issuer", nsmemu.Config{ModuleID: "m"}},
		{"user PCR", nsmemu.Config{Issuer: iss, ModuleID: "m", PCRs: map[int][]byte{16: pcrValue(1)}}},
		{"negative PCR", nsmemu.Config{Issuer: iss, ModuleID: "m", PCRs: map[int][]byte{-1: pcrValue(1)}}},
		{"short PCR", nsmemu.Config{Issuer: iss, ModuleID: "m", PCRs: map[int][]byte{0: make([]byte, 32)}}},
	}
	for _, tc := range cases {
		if e, err := nsmemu.New(tc.cfg); err == nil {
			t.Errorf("%s: New succeeded: %v", tc.name, e)
		}
	}
}

// Concurrent extends of one PCR are serialised: no update is lost.
func TestConcurrentExtend(t *testing.T) {
	ctx := context.Background()
	for _, tr := range transports(t, func() *nsmemu.Emulator { return newEmulator(t, nsmemu.Config{}) }) {
		c := tr.c
		t.Run(tr.name, func(t *testing.T) {
			const idx = 31
			var wg sync.WaitGroup
			const n = 8 * 20
			for range 8 {
				wg.Go(func() {
					for range 20 {
						if _, err := c.ExtendPCR(ctx, idx, []byte("same")); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			want := make([]byte, 48)
			for range n {
				want = extend(want, []byte("same"))
			}
			p, err := c.DescribePCR(ctx, idx)
			if err != nil || !bytes.Equal(p.Value, want) {
				t.Fatalf("PCR%d after %d extends = %x, %v; want %x", idx, n, p.Value, err, want)
			}
		})
	}
}

func TestServeFraming(t *testing.T) {
	e := newEmulator(t, nsmemu.Config{})
	path := filepath.Join(t.TempDir(), "nsm.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Serve(ctx, l) }()

	// An oversized request frame gets InputTooLarge and the connection ends.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0, 0, 0x10, 0x01}) // 4097
	b, err := nsm.ReadFrame(c, nsm.MaxResponseSize)
	if err != nil {
		t.Fatalf("no answer to an oversized frame: %v", err)
	}
	if r, _ := nsm.DecodeResponse(b); r != (nsm.ErrorResponse{Code: nsm.InputTooLarge}) {
		t.Fatalf("answer = %#v, want InputTooLarge", r)
	}
	if _, err := nsm.ReadFrame(c, nsm.MaxResponseSize); err != io.EOF {
		t.Fatalf("connection after an oversized frame: %v, want EOF", err)
	}
	c.Close()

	// A zero-length frame closes the connection without an answer.
	c, _ = net.Dial("unix", path)
	c.Write([]byte{0, 0, 0, 0})
	if _, err := nsm.ReadFrame(c, nsm.MaxResponseSize); err != io.EOF {
		t.Fatalf("after a zero-length frame: %v, want EOF", err)
	}
	c.Close()

	// An idle connection is closed when ctx ends, and Serve returns nil.
	idle, _ := net.Dial("unix", path)
	req, _ := nsm.EncodeRequest(nsm.DescribeNSMRequest{})
	nsm.WriteFrame(idle, req)
	if _, err := nsm.ReadFrame(idle, nsm.MaxResponseSize); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after cancel = %v, want nil", err)
	}
	if _, err := nsm.ReadFrame(idle, nsm.MaxResponseSize); err != io.EOF {
		t.Fatalf("idle connection after Serve returned: %v, want EOF", err)
	}

	// A listener failure other than cancellation is returned.
	l2, _ := net.Listen("unix", filepath.Join(t.TempDir(), "nsm2.sock"))
	l2.Close()
	if err := e.Serve(context.Background(), l2); err == nil {
		t.Fatal("Serve on a closed listener returned nil")
	}
}
