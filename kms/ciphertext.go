package kms

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Ciphertext blob format, version 1 (all integers big-endian):
//
//	offset  size  field
//	0       4     magic "CKMS"
//	4       1     format version = 1
//	5       1     n = length of the key id (1..64)
//	6       n     key id (ASCII, the key's UUID)
//	6+n     4     key material version (≥ 1)
//	10+n    16    salt
//	26+n    12    GCM nonce
//	38+n    ...   AES-256-GCM ciphertext of the plaintext, then the 16-byte tag
//
// The data key is HKDF-SHA256(material, salt, info "cloister-kms/v1 data"),
// so no two messages share an AES key. The GCM additional data is the
// header (bytes 0..26+n, i.e. everything before the nonce) followed by the
// canonical encoding of the encryption context: the pairs sorted by key,
// each as uint32 len(key) ‖ key ‖ uint32 len(value) ‖ value. Any change to
// the header, the context or the ciphertext makes decryption fail.
const (
	blobMagic   = "CKMS"
	blobVersion = 1
	saltSize    = 16
	nonceSize   = 12
	tagSize     = 16
	maxKeyIDLen = 64
)

var errBlob = errors.New("malformed ciphertext blob")

// blobHeader is the parsed, not yet authenticated header.
type blobHeader struct {
	keyID   string
	version uint32
	header  []byte // bytes before the nonce
	nonce   []byte
	body    []byte // ciphertext + tag
}

func parseBlob(b []byte) (blobHeader, error) {
	var h blobHeader
	if len(b) < 6 || string(b[:4]) != blobMagic || b[4] != blobVersion {
		return h, fmt.Errorf("%w: not a Cloister KMS ciphertext (magic/version)", errBlob)
	}
	n := int(b[5])
	if n == 0 || n > maxKeyIDLen {
		return h, fmt.Errorf("%w: key id length %d", errBlob, n)
	}
	hdrLen := 6 + n + 4 + saltSize
	if len(b) < hdrLen+nonceSize+tagSize {
		return h, fmt.Errorf("%w: truncated", errBlob)
	}
	h.keyID = string(b[6 : 6+n])
	h.version = binary.BigEndian.Uint32(b[6+n:])
	if h.version == 0 {
		return h, fmt.Errorf("%w: material version 0", errBlob)
	}
	h.header = b[:hdrLen]
	h.nonce = b[hdrLen : hdrLen+nonceSize]
	h.body = b[hdrLen+nonceSize:]
	return h, nil
}

// contextAAD is the canonical encoding of an encryption context.
func contextAAD(dst []byte, ec map[string]string) []byte {
	keys := make([]string, 0, len(ec))
	for k := range ec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(k)))
		dst = append(dst, k...)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(ec[k])))
		dst = append(dst, ec[k]...)
	}
	return dst
}

func dataAEAD(material, salt []byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, material, salt, "cloister-kms/v1 data", 32)
	if err != nil {
		return nil, err
	}
	blk, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// sealBlob encrypts plaintext under one material version of keyID.
func sealBlob(rand io.Reader, keyID string, version uint32, material, plaintext []byte, ec map[string]string) ([]byte, error) {
	if len(keyID) == 0 || len(keyID) > maxKeyIDLen {
		return nil, fmt.Errorf("kms: key id length %d", len(keyID))
	}
	out := make([]byte, 0, 6+len(keyID)+4+saltSize+nonceSize+len(plaintext)+tagSize)
	out = append(out, blobMagic...)
	out = append(out, blobVersion, byte(len(keyID)))
	out = append(out, keyID...)
	out = binary.BigEndian.AppendUint32(out, version)
	var rnd [saltSize + nonceSize]byte
	if _, err := io.ReadFull(rand, rnd[:]); err != nil {
		return nil, fmt.Errorf("kms: randomness: %w", err)
	}
	out = append(out, rnd[:saltSize]...)
	hdr := out
	aead, err := dataAEAD(material, rnd[:saltSize])
	if err != nil {
		return nil, err
	}
	out = append(out, rnd[saltSize:]...)
	ad := contextAAD(append([]byte(nil), hdr...), ec)
	return aead.Seal(out, rnd[saltSize:], plaintext, ad), nil
}

// openBlob authenticates and decrypts a parsed blob.
func openBlob(h blobHeader, material []byte, ec map[string]string) ([]byte, error) {
	salt := h.header[len(h.header)-saltSize:]
	aead, err := dataAEAD(material, salt)
	if err != nil {
		return nil, err
	}
	ad := contextAAD(append([]byte(nil), h.header...), ec)
	pt, err := aead.Open(nil, h.nonce, h.body, ad)
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed (wrong encryption context or corrupted)", errBlob)
	}
	return pt, nil
}
