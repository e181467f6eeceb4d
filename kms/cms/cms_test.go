package cms

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/testenv"
)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func edgebitKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	blk, _ := pem.Decode(readFile(t, "edgebit-1-recipient-rsa2048.key.pem"))
	if blk == nil {
		t.Fatal("no PEM block in edgebit key")
	}
	k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestDecryptRealAWSBlob(t *testing.T) {
	blob := readFile(t, "edgebit-1-ciphertext-for-recipient.der")
	want := readFile(t, "edgebit-1-expected-plaintext.bin")
	got, err := Decrypt(blob, edgebitKey(t))
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("plaintext = %x, want %x", got, want)
	}
}

func TestParsePrimitiveRealAWSBlob(t *testing.T) {
	e, err := Parse(readFile(t, "awssdkc-2-primitive-ctx0.ber"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := map[string]string{}
	for _, line := range strings.Split(string(readFile(t, "awssdkc-2-primitive-ctx0.expected.txt")), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "source") {
			continue
		}
		want[k] = v
	}
	got := map[string]string{
		"encrypted_key(256B)": hex.EncodeToString(e.Recipients[0].EncryptedKey),
		"iv":                  hex.EncodeToString(e.IV),
		"ciphertext(16B)":     hex.EncodeToString(e.EncryptedContent),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("parts (-want +got):\n%s", diff)
	}
	if len(e.Recipients) != 1 || e.ContentEncryptionAlgorithm != "AES-256-CBC" || len(e.Recipients[0].SubjectKeyID) != 32 {
		t.Fatalf("unexpected parse: %+v", e)
	}
}

func TestRealBlobRIDIsSHA256OfSPKI(t *testing.T) {
	e, err := Parse(readFile(t, "edgebit-1-ciphertext-for-recipient.der"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(readFile(t, "edgebit-1-recipient-rsa2048.pub.pem"))
	sum := sha256.Sum256(blk.Bytes)
	if !bytes.Equal(e.Recipients[0].SubjectKeyID, sum[:]) {
		t.Fatalf("rid %x != SHA-256(SPKI) %x", e.Recipients[0].SubjectKeyID, sum)
	}
}

// TestEncryptLayoutMatchesAWS builds a blob for the same recipient and the
// same plaintext length as the real AWS blob and checks every byte outside
// the random fields (wrapped key, IV, ciphertext) is identical.
func TestEncryptLayoutMatchesAWS(t *testing.T) {
	awsBlob := readFile(t, "edgebit-1-ciphertext-for-recipient.der")
	blk, _ := pem.Decode(readFile(t, "edgebit-1-recipient-rsa2048.pub.pem"))
	ours, err := Encrypt(rand.Reader, blk.Bytes, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	if len(ours) != len(awsBlob) {
		t.Fatalf("length %d, AWS blob is %d", len(ours), len(awsBlob))
	}
	random := [][2]int{{131, 387}, {415, 431}, {435, 483}} // encryptedKey, IV, encryptedContent chunk contents
	for i := range awsBlob {
		inRandom := false
		for _, r := range random {
			if i >= r[0] && i < r[1] {
				inRandom = true
			}
		}
		if !inRandom && ours[i] != awsBlob[i] {
			t.Fatalf("byte %d = %#02x, AWS has %#02x", i, ours[i], awsBlob[i])
		}
	}
	if !bytes.Equal(awsBlob[65:127], oaepSHA256AlgorithmID) {
		t.Fatalf("OAEP AlgorithmIdentifier differs from AWS's")
	}
	got, err := Decrypt(ours, edgebitKey(t))
	if err != nil || !bytes.Equal(got, make([]byte, 32)) {
		t.Fatalf("Decrypt(own blob) = %x, %v", got, err)
	}
}

func TestRoundTrip(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 15, 16, 17, 32, 1024, 4096, 70000} {
		pt := make([]byte, n)
		rand.Read(pt)
		blob, err := EncryptToKey(rand.Reader, &key.PublicKey, pt)
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		got, err := Decrypt(blob, key)
		if err != nil {
			t.Fatalf("n=%d: Decrypt: %v", n, err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("n=%d: round trip mismatch", n)
		}
	}
}

// toPrimitive rewrites an Encrypt blob's constructed encryptedContent into
// the primitive [0] form (as in the awssdkc blob).
func toPrimitive(t *testing.T, blob []byte) []byte {
	t.Helper()
	e, err := parseBER(blob)
	if err != nil {
		t.Fatal(err)
	}
	eci := e.children[1].children[0].children[2]
	body := eci.children[2]
	ct, _ := octets(body)
	i := bytes.Index(blob, []byte{0xa0, 0x80, 0x04})
	if i < 0 {
		t.Fatal("constructed [0] not found")
	}
	out := append([]byte{}, blob[:i]...)
	out = append(out, tlv(0x80, ct)...)
	out = append(out, 0, 0, 0, 0, 0, 0, 0, 0)
	return out
}

func TestPrimitiveAndChunkedContent(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	pt := []byte("attested plaintext, several blocks long.........")
	blob, err := EncryptToKey(rand.Reader, &key.PublicKey, pt)
	if err != nil {
		t.Fatal(err)
	}
	prim := toPrimitive(t, blob)
	got, err := Decrypt(prim, key)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("primitive form: %q, %v", got, err)
	}
	// Split the single chunk into three chunks, one of them nested.
	e, _ := Parse(blob)
	ct := e.EncryptedContent
	chunks := concat(tlv(0x04, ct[:5]), []byte{0x24, 0x80}, tlv(0x04, ct[5:20]), []byte{0, 0}, tlv(0x04, ct[20:]))
	i := bytes.Index(blob, []byte{0xa0, 0x80, 0x04})
	split := concat(blob[:i+2], chunks, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	got, err = Decrypt(split, key)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("chunked form: %q, %v", got, err)
	}
}

func TestDecryptErrors(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	blob, _ := EncryptToKey(rand.Reader, &key.PublicKey, []byte("secret"))
	if _, err := Decrypt(blob, other); !errors.Is(err, ErrNoRecipient) {
		t.Errorf("wrong key: %v, want ErrNoRecipient", err)
	}
	bad := append([]byte{}, blob...)
	bad[200] ^= 1 // inside encryptedKey
	if _, err := Decrypt(bad, key); !errors.Is(err, ErrDecrypt) {
		t.Errorf("corrupted key: %v, want ErrDecrypt", err)
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	if _, err := EncryptToKey(rand.Reader, &small.PublicKey, nil); !errors.Is(err, ErrKey) {
		t.Errorf("1024-bit key: %v, want ErrKey", err)
	}
	if _, err := Encrypt(rand.Reader, []byte{1, 2, 3}, nil); !errors.Is(err, ErrKey) {
		t.Errorf("garbage SPKI: %v, want ErrKey", err)
	}
}

func TestParseRejects(t *testing.T) {
	awsBlob := readFile(t, "edgebit-1-ciphertext-for-recipient.der")
	mut := func(off int, b byte) []byte {
		c := append([]byte{}, awsBlob...)
		c[off] = b
		return c
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"trailing", append(append([]byte{}, awsBlob...), 0), ErrMalformed},
		{"not enveloped", mut(12, 0x01), ErrUnsupported},
		{"version 3", mut(19, 0x03), ErrUnsupported},
		{"ktri version 0", mut(30, 0x00), ErrUnsupported},
		{"oaep oid", mut(77, 0x0a), ErrUnsupported},
		{"sha256 oid", mut(94, 0x02), ErrUnsupported},
		{"content type", mut(399, 0x02), ErrUnsupported},
		{"aes oid", mut(411, 0x2b), ErrUnsupported},
		{"too large", make([]byte, MaxInput+1), ErrMalformed},
		{"deep", bytes.Repeat([]byte{0x30, 0x80}, 100), ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Parse(tc.in)
			if !errors.Is(err, tc.want) || e != nil {
				t.Fatalf("Parse = %v, %v; want %v", e, err, tc.want)
			}
		})
	}
	for i := range awsBlob {
		if _, err := Parse(awsBlob[:i]); err == nil {
			t.Fatalf("truncation to %d bytes parsed", i)
		}
	}
}

// TestOpenSSLDecryptsOurBlob checks interoperability: openssl cms decrypts
// what Encrypt produces, given a certificate whose subjectKeyIdentifier is
// SHA-256 of the SPKI (how openssl matches a v2 KeyTransRecipientInfo).
func TestOpenSSLDecryptsOurBlob(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl", "apt-get install openssl")
	dir := t.TempDir()
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	ski, _ := SubjectKeyID(&key.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "enclave recipient"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		SubjectKeyId: ski,
		KeyUsage:     x509.KeyUsageKeyEncipherment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert := write("cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyFile := write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	pt := bytes.Repeat([]byte("0123456789abcdef"), 70)[:1111]
	blob, err := EncryptToKey(rand.Reader, &key.PublicKey, pt)
	if err != nil {
		t.Fatal(err)
	}
	in := write("blob.der", blob)
	for _, args := range [][]string{
		{"cms", "-decrypt", "-inform", "DER", "-in", in, "-recip", cert, "-inkey", keyFile, "-binary"},
		{"cms", "-decrypt", "-inform", "DER", "-in", in, "-inkey", keyFile, "-binary"},
	} {
		out, err := exec.Command(openssl, args...).Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				t.Fatalf("openssl %v: %v: %s", args, err, ee.Stderr)
			}
			t.Fatal(err)
		}
		if !bytes.Equal(out, pt) {
			t.Fatalf("openssl %v output %d bytes, want %d", args, len(out), len(pt))
		}
	}
	// The real AWS blob decrypts with openssl as well (same recipient rule).
	out, err := exec.Command(openssl, "cms", "-decrypt", "-inform", "DER", "-binary",
		"-in", filepath.Join("testdata", "edgebit-1-ciphertext-for-recipient.der"),
		"-inkey", filepath.Join("testdata", "edgebit-1-recipient-rsa2048.key.pem")).Output()
	if err != nil || !bytes.Equal(out, readFile(t, "edgebit-1-expected-plaintext.bin")) {
		t.Fatalf("openssl on the AWS blob: %x, %v", out, err)
	}
}

func BenchmarkEncrypt(b *testing.B) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	pt := make([]byte, 32)
	for b.Loop() {
		if _, err := EncryptToKey(rand.Reader, &key.PublicKey, pt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	blob := readFile(b, "edgebit-1-ciphertext-for-recipient.der")
	for b.Loop() {
		if _, err := Parse(blob); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(readFile(f, "edgebit-1-ciphertext-for-recipient.der"))
	f.Add(readFile(f, "awssdkc-2-primitive-ctx0.ber"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Parse(b)
		if (e == nil) == (err == nil) {
			t.Fatalf("Parse returned value %v with error %v", e, err)
		}
		if err != nil {
			return
		}
		if len(e.Recipients) == 0 || len(e.IV) != 16 || len(e.EncryptedContent)%16 != 0 || len(e.EncryptedContent) == 0 {
			t.Fatalf("Parse accepted an inconsistent value: %+v", e)
		}
	})
}
