package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/parent/parenttest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parenttest.Cleanup()
	if app.dir != "" {
		os.RemoveAll(app.dir)
	}
	os.Exit(code)
}

// app is the enclaveapp test program, built once.
var app struct {
	once sync.Once
	dir  string
	path string
}

// appImage builds an EIF that runs enclaveapp with args; extra are further
// build-enclave flags.
func appImage(t testing.TB, dir, name string, extra []string, args ...string) string {
	t.Helper()
	app.once.Do(func() {
		app.dir, _ = os.MkdirTemp("", "cloister-e2e-app")
		app.path = parenttest.BuildProgram(t, app.dir, "enclaveapp", "./e2e/testdata/enclaveapp")
	})
	if app.path == "" {
		t.Fatal("enclaveapp was not built")
	}
	return parenttest.BuildImage(t, dir, parenttest.Image{
		Name:  name,
		Files: map[string]string{"bin/enclaveapp": app.path},
		Cmd:   append([]string{"/bin/enclaveapp"}, args...),
		Extra: extra,
	})
}

// attestationFrom reads the attestation document the attest test
// program serves on port 5001 of enclave id.
func attestationFrom(ctx context.Context, t testing.TB, d *parenttest.Daemon, id string) []byte {
	t.Helper()
	c, err := d.Client.Connect(ctx, id, 5001)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := io.ReadAll(c)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// verifyDevRoot verifies an attestation document under d's development
// root (fetched from the daemon) and nothing else; a document that does
// not verify fails the test, naming what (where it came from).
func verifyDevRoot(ctx context.Context, t testing.TB, d *parenttest.Daemon, doc []byte, what string) *attest.Verified {
	t.Helper()
	rootPEM, err := d.Client.DevRootPEM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(rootPEM)
	if blk == nil {
		t.Fatalf("the daemon's development root is not PEM: %q", rootPEM)
	}
	root, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	v, err := attest.Verify(doc, time.Now(), attest.VerifierConfig{Roots: []*x509.Certificate{root}, NoAWSRoot: true})
	if err != nil {
		t.Fatalf("%s does not verify under the daemon's development root: %v", what, err)
	}
	return v
}
