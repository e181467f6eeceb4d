package cms

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Sentinel errors; every error returned by this package wraps one of them.
var (
	// ErrMalformed: the input is not a well-formed CMS EnvelopedData in the
	// shape AWS KMS produces.
	ErrMalformed = errors.New("cms: malformed enveloped data")
	// ErrUnsupported: well-formed but uses an algorithm or version this
	// package does not implement (anything other than RSAES-OAEP with
	// SHA-256/MGF1-SHA-256 and AES-CBC).
	ErrUnsupported = errors.New("cms: unsupported algorithm or version")
	// ErrNoRecipient: no KeyTransRecipientInfo names the given key.
	ErrNoRecipient = errors.New("cms: no recipient matches the key")
	// ErrDecrypt: the key unwrap or the content decryption failed (wrong key
	// or corrupted ciphertext).
	ErrDecrypt = errors.New("cms: decryption failed")
	// ErrKey: the recipient public key is unusable (not RSA, too small, or
	// not a DER SubjectPublicKeyInfo).
	ErrKey = errors.New("cms: unusable recipient key")
)

// MinRSABits is the smallest recipient RSA modulus Encrypt accepts.
const MinRSABits = 2048

// DER contents of the object identifiers used here.
var (
	oidEnvelopedData = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03} // 1.2.840.113549.1.7.3
	oidData          = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01} // 1.2.840.113549.1.7.1
	oidRSAESOAEP     = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07} // 1.2.840.113549.1.1.7
	oidMGF1          = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08} // 1.2.840.113549.1.1.8
	oidPSpecified    = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x09} // 1.2.840.113549.1.1.9
	oidSHA256        = []byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01} // 2.16.840.1.101.3.4.2.1
	oidAES128CBC     = []byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02} // 2.16.840.1.101.3.4.1.2
	oidAES192CBC     = []byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x16} // 2.16.840.1.101.3.4.1.22
	oidAES256CBC     = []byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a} // 2.16.840.1.101.3.4.1.42
)

// oaepSHA256AlgorithmID is the DER keyEncryptionAlgorithm AWS KMS writes:
// rsaesOaep with RSAES-OAEP-params { hashFunc [0] sha256 (NULL params),
// maskGenFunc [1] mgf1(sha256, NULL params) }, pSourceFunc absent (default
// empty label). Byte-identical to the one in real AWS blobs (see the test).
var oaepSHA256AlgorithmID = []byte{
	0x30, 0x3c,
	0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07,
	0x30, 0x2f,
	0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
	0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
	0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
}

// KeyEncryptionRSAOAEPSHA256 names the only key-transport algorithm supported:
// RSAES-OAEP, hash SHA-256, MGF1 with SHA-256, empty label. It is also the
// KMS KeyEncryptionAlgorithm value.
const KeyEncryptionRSAOAEPSHA256 = "RSAES_OAEP_SHA_256"

// Recipient is one KeyTransRecipientInfo (version 2, rid = [0]
// subjectKeyIdentifier).
type Recipient struct {
	// SubjectKeyID is the rid: SHA-256 of the recipient's DER
	// SubjectPublicKeyInfo when produced by AWS KMS or Encrypt.
	SubjectKeyID []byte
	// KeyEncryptionAlgorithm is always KeyEncryptionRSAOAEPSHA256 after Parse.
	KeyEncryptionAlgorithm string
	// EncryptedKey is the RSA-OAEP-wrapped content-encryption key.
	EncryptedKey []byte
}

// EnvelopedData is the parsed content of a CiphertextForRecipient. Parse
// fills it; it holds no secret.
type EnvelopedData struct {
	// Recipients lists the KeyTransRecipientInfos, in order (AWS writes one).
	Recipients []Recipient
	// ContentEncryptionAlgorithm is "AES-128-CBC", "AES-192-CBC" or
	// "AES-256-CBC" (AWS uses AES-256-CBC).
	ContentEncryptionAlgorithm string
	// IV is the 16-byte CBC initialisation vector.
	IV []byte
	// EncryptedContent is the CBC ciphertext (PKCS#7-padded), with BER
	// constructed chunks already concatenated.
	EncryptedContent []byte
}

// Parse decodes a BER (or DER) CMS ContentInfo holding EnvelopedData in the
// shape AWS KMS emits for CiphertextForRecipient. It checks: contentType
// id-envelopedData; EnvelopedData version 2; optional originatorInfo [0]
// skipped; at least one recipient, every one a KeyTransRecipientInfo
// version 2 with rid [0] subjectKeyIdentifier and keyEncryptionAlgorithm
// RSAES-OAEP with SHA-256 hash and MGF1-SHA-256 (pSourceFunc absent or an
// empty pSpecified label); encryptedContentInfo contentType id-data,
// AES-CBC with a 16-byte IV, and encryptedContent [0] present, primitive or
// constructed (chunks concatenated), a non-zero multiple of 16 bytes.
// Definite and indefinite lengths are accepted, input is limited to
// MaxInput bytes and the decoder is bounded in depth and element count.
// Unprotected attributes [1] after encryptedContentInfo are ignored.
func Parse(b []byte) (*EnvelopedData, error) {
	if len(b) > MaxInput {
		return nil, fmt.Errorf("%w: %d bytes exceeds the %d-byte limit", ErrMalformed, len(b), MaxInput)
	}
	root, err := parseBER(b)
	if err != nil {
		return nil, err
	}
	if err := constructedOf(root, classUniversal, tagSequence, "ContentInfo"); err != nil {
		return nil, err
	}
	if len(root.children) != 2 {
		return nil, fmt.Errorf("%w: ContentInfo has %d fields, want 2", ErrMalformed, len(root.children))
	}
	ct, err := oid(root.children[0])
	if err != nil {
		return nil, fmt.Errorf("ContentInfo contentType: %w", err)
	}
	if !bytes.Equal(ct, oidEnvelopedData) {
		return nil, fmt.Errorf("%w: contentType is not id-envelopedData", ErrUnsupported)
	}
	explicit := root.children[1]
	if err := constructedOf(explicit, classContext, 0, "ContentInfo content"); err != nil {
		return nil, err
	}
	if len(explicit.children) != 1 {
		return nil, fmt.Errorf("%w: ContentInfo [0] holds %d values, want 1", ErrMalformed, len(explicit.children))
	}
	env := explicit.children[0]
	if err := constructedOf(env, classUniversal, tagSequence, "EnvelopedData"); err != nil {
		return nil, err
	}
	f := env.children
	if len(f) < 3 {
		return nil, fmt.Errorf("%w: EnvelopedData has %d fields", ErrMalformed, len(f))
	}
	v, err := smallInt(f[0])
	if err != nil {
		return nil, fmt.Errorf("EnvelopedData version: %w", err)
	}
	if v != 2 {
		return nil, fmt.Errorf("%w: EnvelopedData version %d, want 2", ErrUnsupported, v)
	}
	f = f[1:]
	if f[0].is(classContext, 0) { // originatorInfo
		f = f[1:]
	}
	if len(f) < 2 {
		return nil, fmt.Errorf("%w: EnvelopedData lacks recipientInfos or encryptedContentInfo", ErrMalformed)
	}
	out := &EnvelopedData{}
	if err := constructedOf(f[0], classUniversal, tagSet, "recipientInfos"); err != nil {
		return nil, err
	}
	if len(f[0].children) == 0 {
		return nil, fmt.Errorf("%w: recipientInfos is empty", ErrMalformed)
	}
	for i, ri := range f[0].children {
		r, err := parseKTRI(ri)
		if err != nil {
			return nil, fmt.Errorf("recipientInfos[%d]: %w", i, err)
		}
		out.Recipients = append(out.Recipients, r)
	}
	if err := parseECI(f[1], out); err != nil {
		return nil, err
	}
	// Anything after encryptedContentInfo must be unprotectedAttrs [1].
	for _, x := range f[2:] {
		if !x.is(classContext, 1) {
			return nil, fmt.Errorf("%w: unexpected field after encryptedContentInfo", ErrMalformed)
		}
	}
	return out, nil
}

// parseKTRI decodes one KeyTransRecipientInfo.
func parseKTRI(e *element) (Recipient, error) {
	if err := constructedOf(e, classUniversal, tagSequence, "KeyTransRecipientInfo"); err != nil {
		return Recipient{}, err
	}
	if len(e.children) != 4 {
		return Recipient{}, fmt.Errorf("%w: KeyTransRecipientInfo has %d fields, want 4", ErrUnsupported, len(e.children))
	}
	v, err := smallInt(e.children[0])
	if err != nil {
		return Recipient{}, fmt.Errorf("KeyTransRecipientInfo version: %w", err)
	}
	if v != 2 {
		return Recipient{}, fmt.Errorf("%w: KeyTransRecipientInfo version %d, want 2 (subjectKeyIdentifier)", ErrUnsupported, v)
	}
	rid := e.children[1]
	if !rid.is(classContext, 0) {
		return Recipient{}, fmt.Errorf("%w: rid is not [0] subjectKeyIdentifier", ErrUnsupported)
	}
	ski, err := octets(rid)
	if err != nil {
		return Recipient{}, err
	}
	if len(ski) == 0 {
		return Recipient{}, fmt.Errorf("%w: empty subjectKeyIdentifier", ErrMalformed)
	}
	if err := checkOAEP(e.children[2]); err != nil {
		return Recipient{}, err
	}
	ek := e.children[3]
	if !ek.is(classUniversal, tagOctetString) {
		return Recipient{}, fmt.Errorf("%w: encryptedKey is not an OCTET STRING", ErrMalformed)
	}
	key, err := octets(ek)
	if err != nil {
		return Recipient{}, err
	}
	if len(key) == 0 {
		return Recipient{}, fmt.Errorf("%w: empty encryptedKey", ErrMalformed)
	}
	return Recipient{SubjectKeyID: ski, KeyEncryptionAlgorithm: KeyEncryptionRSAOAEPSHA256, EncryptedKey: key}, nil
}

// checkOAEP accepts only RSAES-OAEP with SHA-256, MGF1-SHA-256 and the
// default (empty) label. Hash AlgorithmIdentifiers may carry NULL or no
// parameters.
func checkOAEP(e *element) error {
	if err := constructedOf(e, classUniversal, tagSequence, "keyEncryptionAlgorithm"); err != nil {
		return err
	}
	if len(e.children) != 2 {
		return fmt.Errorf("%w: keyEncryptionAlgorithm must be RSAES-OAEP with explicit SHA-256 parameters", ErrUnsupported)
	}
	alg, err := oid(e.children[0])
	if err != nil {
		return err
	}
	if !bytes.Equal(alg, oidRSAESOAEP) {
		return fmt.Errorf("%w: keyEncryptionAlgorithm is not RSAES-OAEP", ErrUnsupported)
	}
	params := e.children[1]
	if err := constructedOf(params, classUniversal, tagSequence, "RSAES-OAEP-params"); err != nil {
		return err
	}
	var sawHash, sawMGF bool
	for _, p := range params.children {
		if p.class != classContext || !p.constructed || len(p.children) != 1 {
			return fmt.Errorf("%w: RSAES-OAEP-params field", ErrMalformed)
		}
		inner := p.children[0]
		switch p.tag {
		case 0:
			if err := checkHashAlg(inner); err != nil {
				return err
			}
			sawHash = true
		case 1:
			if err := constructedOf(inner, classUniversal, tagSequence, "maskGenFunc"); err != nil {
				return err
			}
			if len(inner.children) != 2 {
				return fmt.Errorf("%w: maskGenFunc", ErrMalformed)
			}
			m, err := oid(inner.children[0])
			if err != nil {
				return err
			}
			if !bytes.Equal(m, oidMGF1) {
				return fmt.Errorf("%w: maskGenFunc is not MGF1", ErrUnsupported)
			}
			if err := checkHashAlg(inner.children[1]); err != nil {
				return err
			}
			sawMGF = true
		case 2:
			if err := constructedOf(inner, classUniversal, tagSequence, "pSourceFunc"); err != nil {
				return err
			}
			if len(inner.children) != 2 {
				return fmt.Errorf("%w: pSourceFunc", ErrMalformed)
			}
			ps, err := oid(inner.children[0])
			if err != nil {
				return err
			}
			label, err := octets(inner.children[1])
			if err != nil {
				return err
			}
			if !bytes.Equal(ps, oidPSpecified) || !inner.children[1].is(classUniversal, tagOctetString) || len(label) != 0 {
				return fmt.Errorf("%w: OAEP label must be empty", ErrUnsupported)
			}
		default:
			return fmt.Errorf("%w: unknown RSAES-OAEP-params field [%d]", ErrMalformed, p.tag)
		}
	}
	if !sawHash || !sawMGF {
		return fmt.Errorf("%w: RSAES-OAEP with default SHA-1 parameters", ErrUnsupported)
	}
	return nil
}

// checkHashAlg accepts an AlgorithmIdentifier for SHA-256 with absent or NULL parameters.
func checkHashAlg(e *element) error {
	if err := constructedOf(e, classUniversal, tagSequence, "hash AlgorithmIdentifier"); err != nil {
		return err
	}
	if len(e.children) < 1 || len(e.children) > 2 {
		return fmt.Errorf("%w: hash AlgorithmIdentifier", ErrMalformed)
	}
	h, err := oid(e.children[0])
	if err != nil {
		return err
	}
	if !bytes.Equal(h, oidSHA256) {
		return fmt.Errorf("%w: OAEP hash is not SHA-256", ErrUnsupported)
	}
	if len(e.children) == 2 {
		p := e.children[1]
		if !p.is(classUniversal, tagNull) || p.constructed || len(p.content) != 0 {
			return fmt.Errorf("%w: SHA-256 parameters must be NULL or absent", ErrMalformed)
		}
	}
	return nil
}

// parseECI decodes EncryptedContentInfo into out.
func parseECI(e *element, out *EnvelopedData) error {
	if err := constructedOf(e, classUniversal, tagSequence, "encryptedContentInfo"); err != nil {
		return err
	}
	if len(e.children) != 3 {
		return fmt.Errorf("%w: encryptedContentInfo has %d fields, want 3 (encryptedContent is required)", ErrMalformed, len(e.children))
	}
	ct, err := oid(e.children[0])
	if err != nil {
		return err
	}
	if !bytes.Equal(ct, oidData) {
		return fmt.Errorf("%w: encrypted contentType is not id-data", ErrUnsupported)
	}
	alg := e.children[1]
	if err := constructedOf(alg, classUniversal, tagSequence, "contentEncryptionAlgorithm"); err != nil {
		return err
	}
	if len(alg.children) != 2 {
		return fmt.Errorf("%w: contentEncryptionAlgorithm must carry an IV", ErrMalformed)
	}
	a, err := oid(alg.children[0])
	if err != nil {
		return err
	}
	switch {
	case bytes.Equal(a, oidAES256CBC):
		out.ContentEncryptionAlgorithm = "AES-256-CBC"
	case bytes.Equal(a, oidAES192CBC):
		out.ContentEncryptionAlgorithm = "AES-192-CBC"
	case bytes.Equal(a, oidAES128CBC):
		out.ContentEncryptionAlgorithm = "AES-128-CBC"
	default:
		return fmt.Errorf("%w: content encryption is not AES-CBC", ErrUnsupported)
	}
	if !alg.children[1].is(classUniversal, tagOctetString) {
		return fmt.Errorf("%w: AES-CBC parameters are not an OCTET STRING IV", ErrMalformed)
	}
	iv, err := octets(alg.children[1])
	if err != nil {
		return err
	}
	if len(iv) != aes.BlockSize {
		return fmt.Errorf("%w: IV is %d bytes, want 16", ErrMalformed, len(iv))
	}
	body := e.children[2]
	if !body.is(classContext, 0) {
		return fmt.Errorf("%w: encryptedContent is not [0]", ErrMalformed)
	}
	ec, err := octets(body)
	if err != nil {
		return err
	}
	if len(ec) == 0 || len(ec)%aes.BlockSize != 0 {
		return fmt.Errorf("%w: encryptedContent is %d bytes, not a non-zero multiple of 16", ErrMalformed, len(ec))
	}
	out.IV, out.EncryptedContent = iv, ec
	return nil
}

// SubjectKeyID returns the recipient identifier AWS KMS uses: SHA-256 of the
// DER SubjectPublicKeyInfo of pub.
func SubjectKeyID(pub *rsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	s := sha256.Sum256(der)
	return s[:], nil
}

// Decrypt finds the recipient whose subjectKeyIdentifier equals
// SubjectKeyID(&priv.PublicKey), unwraps its key with RSA-OAEP (SHA-256,
// MGF1-SHA-256), checks the key length matches the AES variant, decrypts the
// content with AES-CBC and removes PKCS#7 padding (checked in constant time).
func (e *EnvelopedData) Decrypt(priv *rsa.PrivateKey) ([]byte, error) {
	ski, err := SubjectKeyID(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	for _, r := range e.Recipients {
		if subtle.ConstantTimeCompare(r.SubjectKeyID, ski) != 1 {
			continue
		}
		cek, err := rsa.DecryptOAEP(sha256.New(), nil, priv, r.EncryptedKey, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: key unwrap: %v", ErrDecrypt, err)
		}
		want := map[string]int{"AES-128-CBC": 16, "AES-192-CBC": 24, "AES-256-CBC": 32}[e.ContentEncryptionAlgorithm]
		if len(cek) != want {
			return nil, fmt.Errorf("%w: unwrapped key is %d bytes, %s needs %d", ErrDecrypt, len(cek), e.ContentEncryptionAlgorithm, want)
		}
		return cbcDecrypt(cek, e.IV, e.EncryptedContent)
	}
	return nil, ErrNoRecipient
}

// Decrypt parses blob (see Parse) and decrypts it with priv (see
// (*EnvelopedData).Decrypt).
func Decrypt(blob []byte, priv *rsa.PrivateKey) ([]byte, error) {
	e, err := Parse(blob)
	if err != nil {
		return nil, err
	}
	return e.Decrypt(priv)
}

func cbcDecrypt(key, iv, ct []byte) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
	n := len(pt)
	pad := int(pt[n-1])
	// Constant-time PKCS#7 check over the last block.
	good := subtle.ConstantTimeLessOrEq(1, pad) & subtle.ConstantTimeLessOrEq(pad, aes.BlockSize)
	for i := 1; i <= aes.BlockSize; i++ {
		inPad := subtle.ConstantTimeLessOrEq(i, pad)
		eq := subtle.ConstantTimeByteEq(pt[n-i], byte(pad))
		good &= eq | (1 ^ inPad)
	}
	if good != 1 {
		return nil, fmt.Errorf("%w: bad padding", ErrDecrypt)
	}
	return pt[:n-pad], nil
}

// Encrypt envelopes plaintext for the RSA key in spki (a DER
// SubjectPublicKeyInfo, as carried in an attestation document's public_key)
// exactly as AWS KMS builds CiphertextForRecipient: a fresh 32-byte AES key
// and 16-byte IV from rand, AES-256-CBC with PKCS#7 padding, the key wrapped
// with RSA-OAEP (SHA-256, MGF1-SHA-256, empty label), rid = SHA-256 of the
// spki bytes as given. The encoding copies AWS's BER layout: indefinite
// lengths on ContentInfo, its [0], EnvelopedData and encryptedContentInfo;
// definite lengths inside recipientInfos and the algorithm identifiers; the
// encryptedContent as a constructed indefinite [0] holding one primitive
// OCTET STRING. The key must be RSA with at least MinRSABits bits.
func Encrypt(rand io.Reader, spki, plaintext []byte) ([]byte, error) {
	k, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return nil, fmt.Errorf("%w: public key is not a DER SubjectPublicKeyInfo: %v", ErrKey, err)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: public key is %T, want RSA", ErrKey, k)
	}
	ski := sha256.Sum256(spki)
	return encrypt(rand, pub, ski[:], plaintext)
}

// EncryptToKey is Encrypt for an already-parsed RSA public key; the rid is
// SubjectKeyID(pub).
func EncryptToKey(rand io.Reader, pub *rsa.PublicKey, plaintext []byte) ([]byte, error) {
	ski, err := SubjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	return encrypt(rand, pub, ski, plaintext)
}

func encrypt(rand io.Reader, pub *rsa.PublicKey, ski, plaintext []byte) ([]byte, error) {
	if pub.N == nil || pub.N.BitLen() < MinRSABits {
		return nil, fmt.Errorf("%w: RSA key smaller than %d bits", ErrKey, MinRSABits)
	}
	var keyIV [48]byte
	if _, err := io.ReadFull(rand, keyIV[:]); err != nil {
		return nil, fmt.Errorf("cms: reading randomness: %w", err)
	}
	cek, iv := keyIV[:32], keyIV[32:]
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand, pub, cek, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, fmt.Errorf("cms: %w", err)
	}
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	ct := make([]byte, len(plaintext)+pad)
	copy(ct, plaintext)
	for i := len(plaintext); i < len(ct); i++ {
		ct[i] = byte(pad)
	}
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, ct)

	// KeyTransRecipientInfo (definite).
	ktri := tlv(0x30, concat(
		[]byte{0x02, 0x01, 0x02},
		tlv(0x80, ski),
		oaepSHA256AlgorithmID,
		tlv(0x04, wrapped),
	))
	set := tlv(0x31, ktri)
	alg := tlv(0x30, concat(tlv(0x06, oidAES256CBC), tlv(0x04, iv)))

	var b bytes.Buffer
	b.Grow(len(ct) + len(ktri) + 128)
	b.Write([]byte{0x30, 0x80})
	b.Write(tlv(0x06, oidEnvelopedData))
	b.Write([]byte{0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x02})
	b.Write(set)
	b.Write([]byte{0x30, 0x80})
	b.Write(tlv(0x06, oidData))
	b.Write(alg)
	b.Write([]byte{0xa0, 0x80})
	b.Write(tlv(0x04, ct))
	b.Write([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // [0] content, ECI, EnvelopedData, [0], ContentInfo
	return b.Bytes(), nil
}

// tlv encodes a definite-length DER TLV with a one-byte identifier.
func tlv(tag byte, content []byte) []byte {
	n := len(content)
	var hdr []byte
	switch {
	case n < 0x80:
		hdr = []byte{tag, byte(n)}
	case n <= 0xff:
		hdr = []byte{tag, 0x81, byte(n)}
	case n <= 0xffff:
		hdr = []byte{tag, 0x82, 0, 0}
		binary.BigEndian.PutUint16(hdr[2:], uint16(n))
	default:
		hdr = []byte{tag, 0x84, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[2:], uint32(n))
	}
	return append(hdr, content...)
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
