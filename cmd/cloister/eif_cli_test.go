package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloister/cloister/enclave/eif"
)

// runCLI runs `cloister args...` in-process and returns stdout and the
// exit status main would use.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return out.String(), 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return out.String(), ee.code
	}
	return out.String(), 2
}

func writeSigner(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "cli-signer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func TestEIFCommands(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("CLOISTER_BLOBS", filepath.Join(dir, "no-blobs"))
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin/app"), []byte("app"), 0o755); err != nil {
		t.Fatal(err)
	}
	initBin := filepath.Join(dir, "cloister-init")
	if err := os.WriteFile(initBin, []byte("fake init"), 0o755); err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, "md.json")
	if err := os.WriteFile(md, []byte(`{"owner":"team <a&b>"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "app.eif")

	stdout, code := runCLI(t, "build-enclave", "--rootfs", rootfs, "--output-file", out, "--init", initBin,
		"--cmd", "/bin/app", "--cmd=--flag", "--env", "A=1", "--name", "app", "--version", "1.0", "--metadata", md)
	if code != 0 {
		t.Fatalf("build-enclave exit %d: %s", code, stdout)
	}
	var built eif.BuildInfo
	if err := json.Unmarshal([]byte(stdout), &built); err != nil {
		t.Fatalf("build-enclave output %q: %v", stdout, err)
	}
	img, err := eif.Open(out, eif.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := eif.Measure(img)
	if m.PCR0 != built.Measurements.PCR0 || !eif.IsNoKernel(img) {
		t.Fatal("printed measurements differ from the file's")
	}

	stdout, code = runCLI(t, "describe-eif", "--eif-path", out)
	if code != 0 {
		t.Fatalf("describe-eif exit %d", code)
	}
	var desc map[string]any
	if err := json.Unmarshal([]byte(stdout), &desc); err != nil {
		t.Fatal(err)
	}
	if desc["ImageName"] != "app" || desc["ImageVersion"] != "1.0" || desc["IsSigned"] != false || desc["CheckCRC"] != true {
		t.Fatalf("describe-eif: %s", stdout)
	}
	if !bytes.Contains([]byte(stdout), []byte(`"owner": "team <a&b>"`)) {
		t.Fatalf("custom metadata not flattened or HTML-escaped: %s", stdout)
	}

	cert, key := writeSigner(t, dir)
	stdout, code = runCLI(t, "sign-eif", "--eif-path", out, "--signing-certificate", cert, "--private-key", key)
	if code != 0 {
		t.Fatalf("sign-eif exit %d", code)
	}
	var signed eif.BuildInfo
	if err := json.Unmarshal([]byte(stdout), &signed); err != nil || signed.Measurements.PCR8 == nil || signed.Measurements.PCR0 != built.Measurements.PCR0 {
		t.Fatalf("sign-eif output %s (%v)", stdout, err)
	}
	img, err = eif.Open(out, eif.ReadOptions{}) // CRC must be valid after signing
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eif.VerifySignature(img, time.Now()); err != nil {
		t.Fatal(err)
	}

	stdout, code = runCLI(t, "pcr", "--signing-certificate", cert)
	var pcr8 map[string]string
	if code != 0 || json.Unmarshal([]byte(stdout), &pcr8) != nil {
		t.Fatalf("pcr exit %d: %s", code, stdout)
	}
	stdout, _ = runCLI(t, "describe-eif", "--eif-path", out)
	if err := json.Unmarshal([]byte(stdout), &desc); err != nil {
		t.Fatal(err)
	}
	ms := desc["Measurements"].(map[string]any)
	if ms["PCR8"] != pcr8["PCR8"] || desc["SignatureCheck"] != true || desc["IsSigned"] != true {
		t.Fatalf("PCR8 %v vs pcr --signing-certificate %v; describe %s", ms["PCR8"], pcr8["PCR8"], stdout)
	}

	stdout, code = runCLI(t, "pcr", "--input", initBin)
	want := eif.PCRFromBytes([]byte("fake init"))
	var pcr map[string]string
	if code != 0 || json.Unmarshal([]byte(stdout), &pcr) != nil || pcr["PCR"] != hexOf(want[:]) {
		t.Fatalf("pcr --input: %d %s", code, stdout)
	}

	// Failures: a broken file is exit 1, usage errors exit 2.
	if err := os.WriteFile(filepath.Join(dir, "bad.eif"), []byte("not an eif at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, code := runCLI(t, "describe-eif", "--eif-path", filepath.Join(dir, "bad.eif")); code != 1 {
		t.Errorf("describe-eif of garbage: exit %d", code)
	}
	if _, code := runCLI(t, "pcr"); code != 2 {
		t.Errorf("pcr without flags: exit %d", code)
	}
	if _, code := runCLI(t, "build-enclave", "--output-file", out, "--rootfs", rootfs, "--oci-layout", dir); code != 2 {
		t.Errorf("two sources: exit %d", code)
	}
	if _, code := runCLI(t, "build-enclave", "--output-file", filepath.Join(dir, "x.eif"), "--rootfs", rootfs, "--init", initBin); code != 1 {
		t.Errorf("rootfs without --cmd: exit %d", code)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}
