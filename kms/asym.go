package kms

import (
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/subtle"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/cloister/cloister/kms/cms"
	"github.com/cloister/cloister/kms/store"
)

// Size limits AWS applies.
const (
	maxMessage   = 4096
	maxSignature = 6144
	maxPublicKey = 8192
	maxMac       = 6144
)

// keySpecAndUsage validates CreateKey's KeySpec (or the deprecated
// CustomerMasterKeySpec) and KeyUsage: an unknown value is a
// ValidationException, a spec AWS has that Cloister does not is
// UnsupportedOperationException, and a usage the spec does not allow is a
// ValidationException. KeyUsage defaults to ENCRYPT_DECRYPT, as on AWS, so
// it is required for every spec without that usage.
func keySpecAndUsage(in createKeyInput) (spec, usage string, err error) {
	spec = symmetricDefault
	switch {
	case in.KeySpec != nil && in.CustomerMasterKeySpec != nil && *in.KeySpec != *in.CustomerMasterKeySpec:
		return "", "", apiErr(CodeValidation, "KeySpec and CustomerMasterKeySpec differ; use KeySpec only")
	case in.KeySpec != nil:
		spec = *in.KeySpec
	case in.CustomerMasterKeySpec != nil:
		spec = *in.CustomerMasterKeySpec
	}
	si, ok := keySpecs[spec]
	if !ok {
		if slices.Contains(awsOnlySpecs, spec) {
			return "", "", apiErr(CodeUnsupportedOperation, "KeySpec %s is not supported by this key service", spec)
		}
		return "", "", apiErr(CodeValidation, "1 validation error detected: Value '%s' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: %s", spec, enumList(keySpecNames()))
	}
	usage = usageEncrypt
	if in.KeyUsage != nil {
		usage = *in.KeyUsage
	}
	all := []string{usageEncrypt, usageSign, usageMAC, usageAgreement, "ENCAPSULATE_DECAPSULATE"}
	if !slices.Contains(all, usage) {
		return "", "", apiErr(CodeValidation, "1 validation error detected: Value '%s' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum value set: %s", usage, enumList(all))
	}
	if !slices.Contains(si.usages, usage) {
		return "", "", apiErr(CodeValidation, "KeyUsage %s is not compatible with KeySpec %s; valid key usages: %s", usage, spec, enumList(si.usages))
	}
	return spec, usage, nil
}

func keySpecNames() []string {
	names := make([]string, 0, len(keySpecs))
	for n := range keySpecs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func enumList(v []string) string {
	b := []byte{'['}
	for i, s := range v {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, s...)
	}
	return string(append(b, ']'))
}

// checkEnum makes an unknown enum value a ValidationException naming the
// member.
func checkEnum(member, v string, all []string) error {
	if v == "" {
		return apiErr(CodeValidation, "1 validation error detected: Value null at '%s' failed to satisfy constraint: Member must not be null", member)
	}
	if !slices.Contains(all, v) {
		return apiErr(CodeValidation, "1 validation error detected: Value '%s' at '%s' failed to satisfy constraint: Member must satisfy enum value set: %s", v, member, enumList(all))
	}
	return nil
}

// wantUsage checks the key's KeyUsage for an operation.
func wantUsage(k store.Key, usage, op string) error {
	if k.KeyUsage != usage {
		return apiErr(CodeInvalidKeyUsage, "%s key usage is %s which is not valid for %s.", k.ARN, k.KeyUsage, op)
	}
	return nil
}

// wantAlgorithm checks that alg is one of the key's algorithms.
func wantAlgorithm(k store.Key, alg string, allowed []string) error {
	if !slices.Contains(allowed, alg) {
		return apiErr(CodeInvalidKeyUsage, "Algorithm %s is incompatible with key spec %s of %s; valid algorithms: %s", alg, k.KeySpec, k.ARN, enumList(allowed))
	}
	return nil
}

// keyPairCache holds parsed private keys by key id and material version
// (material never changes once written, so entries never go stale; a key
// deleted later is refused before its material is looked up).
var keyPairCache = struct {
	sync.Mutex
	m map[string]crypto.Signer
}{m: map[string]crypto.Signer{}}

// keyPair returns the key's current private key.
func (s *Server) keyPair(c *call, k store.Key) (crypto.Signer, error) {
	id := k.ID + "/" + strconv.FormatUint(uint64(k.CurrentVersion), 10)
	keyPairCache.Lock()
	p, ok := keyPairCache.m[id]
	keyPairCache.Unlock()
	if ok {
		return p, nil
	}
	m, err := s.cfg.Store.Material(c.ctx, k.ID, k.CurrentVersion)
	if err != nil {
		return nil, err
	}
	if p, err = parsePrivate(k.KeySpec, m); err != nil {
		return nil, err
	}
	keyPairCache.Lock()
	if len(keyPairCache.m) >= 1024 {
		clear(keyPairCache.m)
	}
	keyPairCache.m[id] = p
	keyPairCache.Unlock()
	return p, nil
}

// cryptoKey resolves, authorizes and checks a key for a cryptographic
// operation: enabled, with the given usage.
func (s *Server) cryptoKey(c *call, keyID, action, usage string, ec map[string]string, att *attestedRecipient) (store.Key, error) {
	k, err := s.resolveKey(c, keyID)
	if err != nil {
		return store.Key{}, err
	}
	if err := s.authorize(c, k, action, ec, att); err != nil {
		return store.Key{}, err
	}
	if err := usable(k); err != nil {
		return store.Key{}, err
	}
	if err := wantUsage(k, usage, action[len("kms:"):]); err != nil {
		return store.Key{}, err
	}
	return k, nil
}

// messageDigest returns what a signing algorithm signs: the hash of a RAW
// message, or a DIGEST message itself when its length is the hash's.
func messageDigest(alg, messageType string, msg []byte) ([]byte, error) {
	h := hashFor(alg)
	switch messageType {
	case "", "RAW":
		d := newHash(h)()
		d.Write(msg)
		return d.Sum(nil), nil
	case "DIGEST":
		if len(msg) != h.Size() {
			return nil, apiErr(CodeValidation, "Digest is invalid length for algorithm %s: %d bytes, want %d", alg, len(msg), h.Size())
		}
		return msg, nil
	}
	return nil, apiErr(CodeValidation, "1 validation error detected: Value '%s' at 'messageType' failed to satisfy constraint: Member must satisfy enum value set: [RAW, DIGEST]", messageType)
}

func checkMessage(msg []byte) error {
	if len(msg) == 0 || len(msg) > maxMessage {
		return apiErr(CodeValidation, "1 validation error detected: Value at 'message' failed to satisfy constraint: Member must have length between 1 and %d", maxMessage)
	}
	return nil
}

func (s *Server) sign(c *call) (any, error) {
	var in signInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := checkMessage(in.Message); err != nil {
		return nil, err
	}
	digest, err := s.signingDigest(in.SigningAlgorithm, in.MessageType, in.Message, in.GrantTokens)
	if err != nil {
		return nil, err
	}
	att, err := s.checkSignAttestation(c, in.CloisterAttestation, digest)
	if err != nil {
		return nil, err
	}
	k, priv, err := s.signingKeyPair(c, in.KeyID, "kms:Sign", in.SigningAlgorithm, att, in.DryRun)
	if err != nil {
		return nil, err
	}
	sig, err := signDigest(s.cfg.Rand, priv, in.SigningAlgorithm, digest)
	if err != nil {
		return nil, err
	}
	return signOutput{KeyID: k.ARN, Signature: sig, SigningAlgorithm: in.SigningAlgorithm}, nil
}

func (s *Server) verify(c *call) (any, error) {
	var in verifyInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := checkMessage(in.Message); err != nil {
		return nil, err
	}
	if len(in.Signature) == 0 || len(in.Signature) > maxSignature {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value at 'signature' failed to satisfy constraint: Member must have length between 1 and %d", maxSignature)
	}
	digest, err := s.signingDigest(in.SigningAlgorithm, in.MessageType, in.Message, in.GrantTokens)
	if err != nil {
		return nil, err
	}
	k, priv, err := s.signingKeyPair(c, in.KeyID, "kms:Verify", in.SigningAlgorithm, nil, in.DryRun)
	if err != nil {
		return nil, err
	}
	if !verifyDigest(priv.Public(), in.SigningAlgorithm, digest, in.Signature) {
		return nil, apiErr(CodeInvalidSignature, "The signature does not verify with %s and %s.", k.ARN, in.SigningAlgorithm)
	}
	return verifyOutput{KeyID: k.ARN, SignatureValid: true, SigningAlgorithm: in.SigningAlgorithm}, nil
}

// signingDigest is the validation Sign and Verify share after their
// message checks: the signing algorithm, the grant tokens, and the digest
// the algorithm signs.
func (s *Server) signingDigest(alg, messageType string, msg []byte, grantTokens []string) ([]byte, error) {
	if err := checkEnum("signingAlgorithm", alg, allSigningAlgorithms); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(grantTokens); err != nil {
		return nil, err
	}
	return messageDigest(alg, messageType, msg)
}

// signingKeyPair is the key half Sign and Verify share: the key resolved
// and authorized for action (with att, Sign's attestation, or nil),
// usable for signing with alg, then DryRun honoured, then its key pair.
func (s *Server) signingKeyPair(c *call, keyID, action, alg string, att *attestedRecipient, dryRunOnly bool) (store.Key, crypto.Signer, error) {
	k, err := s.cryptoKey(c, keyID, action, usageSign, nil, att)
	if err != nil {
		return store.Key{}, nil, err
	}
	if err := wantAlgorithm(k, alg, keySpecs[k.KeySpec].signing); err != nil {
		return store.Key{}, nil, err
	}
	if dryRunOnly {
		return store.Key{}, nil, dryRun()
	}
	priv, err := s.keyPair(c, k)
	if err != nil {
		return store.Key{}, nil, err
	}
	return k, priv, nil
}

func (s *Server) getPublicKey(c *call) (any, error) {
	var in keyIDTokensInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:GetPublicKey")
	if err != nil {
		return nil, err
	}
	if err := usable(k); err != nil {
		return nil, err
	}
	if !keySpecs[k.KeySpec].asymmetric {
		return nil, apiErr(CodeUnsupportedOperation, "%s is not an asymmetric key (KeySpec %s); it has no public key.", k.ARN, k.KeySpec)
	}
	priv, err := s.keyPair(c, k)
	if err != nil {
		return nil, err
	}
	der, err := marshalPublic(priv.Public())
	if err != nil {
		return nil, err
	}
	out := getPublicKeyOutput{KeyID: k.ARN, PublicKey: der, CustomerMasterKeySpec: k.KeySpec, KeySpec: k.KeySpec, KeyUsage: k.KeyUsage}
	out.SigningAlgorithms, out.EncryptionAlgorithms, _, out.KeyAgreementAlgorithms = algorithms(k.KeySpec, k.KeyUsage)
	return out, nil
}

// macOf checks a GenerateMac/VerifyMac request and computes the HMAC.
func (s *Server) macOf(c *call, in generateMacInput, action string) (store.Key, []byte, error) {
	if err := checkMessage(in.Message); err != nil {
		return store.Key{}, nil, err
	}
	if err := checkEnum("macAlgorithm", in.MacAlgorithm, allMacAlgorithms); err != nil {
		return store.Key{}, nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return store.Key{}, nil, err
	}
	k, err := s.cryptoKey(c, in.KeyID, action, usageMAC, nil, nil)
	if err != nil {
		return store.Key{}, nil, err
	}
	if err := wantAlgorithm(k, in.MacAlgorithm, keySpecs[k.KeySpec].mac); err != nil {
		return store.Key{}, nil, err
	}
	if in.DryRun {
		return store.Key{}, nil, dryRun()
	}
	m, err := s.cfg.Store.Material(c.ctx, k.ID, k.CurrentVersion)
	if err != nil {
		return store.Key{}, nil, err
	}
	mac := hmac.New(newHash(hashFor(in.MacAlgorithm)), m)
	mac.Write(in.Message)
	return k, mac.Sum(nil), nil
}

func (s *Server) generateMac(c *call) (any, error) {
	var in generateMacInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	k, mac, err := s.macOf(c, in, "kms:GenerateMac")
	if err != nil {
		return nil, err
	}
	return generateMacOutput{KeyID: k.ARN, Mac: mac, MacAlgorithm: in.MacAlgorithm}, nil
}

func (s *Server) verifyMac(c *call) (any, error) {
	var in verifyMacInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if len(in.Mac) == 0 || len(in.Mac) > maxMac {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value at 'mac' failed to satisfy constraint: Member must have length between 1 and %d", maxMac)
	}
	k, mac, err := s.macOf(c, generateMacInput{KeyID: in.KeyID, Message: in.Message, MacAlgorithm: in.MacAlgorithm, GrantTokens: in.GrantTokens, DryRun: in.DryRun}, "kms:VerifyMac")
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(mac, in.Mac) != 1 {
		return nil, apiErr(CodeInvalidMac, "The MAC does not verify with %s and %s.", k.ARN, in.MacAlgorithm)
	}
	return verifyMacOutput{KeyID: k.ARN, MacValid: true, MacAlgorithm: in.MacAlgorithm}, nil
}

// rsaEncrypt encrypts with RSAES-OAEP (SHA-1 or SHA-256, MGF1 with the
// same hash, no label): the raw ciphertext AWS returns, which anyone with
// the public key can produce too.
func (s *Server) rsaEncrypt(c *call, k store.Key, alg string, pt []byte, ec map[string]string) ([]byte, error) {
	if len(ec) > 0 {
		return nil, apiErr(CodeValidation, "EncryptionContext is not supported with asymmetric KMS keys (%s)", k.ARN)
	}
	priv, err := s.keyPair(c, k)
	if err != nil {
		return nil, err
	}
	pub, ok := priv.Public().(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("kms: %s is not an RSA key", k.ID)
	}
	h := crypto.SHA256
	if alg == algOAEPSHA1 {
		h = crypto.SHA1
	}
	if limit := pub.Size() - 2*h.Size() - 2; len(pt) > limit {
		return nil, apiErr(CodeValidation, "Plaintext is %d bytes; %s with %s encrypts at most %d", len(pt), k.KeySpec, alg, limit)
	}
	return rsa.EncryptOAEP(h.New(), s.cfg.Rand, pub, pt, nil)
}

// rsaDecrypt reverses rsaEncrypt; a wrong ciphertext is
// InvalidCiphertextException.
func (s *Server) rsaDecrypt(c *call, k store.Key, alg string, blob []byte, ec map[string]string) ([]byte, error) {
	if len(ec) > 0 {
		return nil, apiErr(CodeValidation, "EncryptionContext is not supported with asymmetric KMS keys (%s)", k.ARN)
	}
	priv, err := s.keyPair(c, k)
	if err != nil {
		return nil, err
	}
	rk, ok := priv.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("kms: %s is not an RSA key", k.ID)
	}
	h := crypto.SHA256
	if alg == algOAEPSHA1 {
		h = crypto.SHA1
	}
	pt, err := rsa.DecryptOAEP(h.New(), nil, rk, blob, nil)
	if err != nil {
		return nil, apiErr(CodeInvalidCiphertext, "The ciphertext does not decrypt with %s and %s.", k.ARN, alg)
	}
	return pt, nil
}

// encryptionAlgorithm validates an EncryptionAlgorithm for key k: absent
// means SYMMETRIC_DEFAULT, an unknown value is ValidationException, one the
// key cannot use is InvalidKeyUsageException.
func encryptionAlgorithm(k store.Key, alg string) (string, error) {
	if alg == "" {
		alg = symmetricDefault
	}
	if err := checkEnum("encryptionAlgorithm", alg, allEncryptionAlgorithms); err != nil {
		return "", err
	}
	return alg, wantAlgorithm(k, alg, keySpecs[k.KeySpec].encryption)
}

// generateDataKeyPair and its WithoutPlaintext form.
func (s *Server) dataKeyPair(c *call, withPlaintext bool) (any, error) {
	var in generateDataKeyPairInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	action := "kms:GenerateDataKeyPair"
	if !withPlaintext {
		action = "kms:GenerateDataKeyPairWithoutPlaintext"
		if in.Recipient != nil {
			return nil, apiErr(CodeValidation, "GenerateDataKeyPairWithoutPlaintext does not take a Recipient")
		}
	}
	pairSpecs := []string{specRSA2048, specRSA3072, specRSA4096, specP256, specP384, specP521, specP256K1, "SM2"}
	if err := checkEnum("keyPairSpec", in.KeyPairSpec, pairSpecs); err != nil {
		return nil, err
	}
	if !keySpecs[in.KeyPairSpec].dataKeyPair {
		return nil, apiErr(CodeUnsupportedOperation, "KeyPairSpec %s is not supported by this key service", in.KeyPairSpec)
	}
	if err := validateContext(in.EncryptionContext); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	att, err := s.checkRecipient(c, in.Recipient)
	if err != nil {
		return nil, err
	}
	k, err := s.cryptoKey(c, in.KeyID, action, usageEncrypt, in.EncryptionContext, att)
	if err != nil {
		return nil, err
	}
	if k.KeySpec != symmetricDefault {
		return nil, apiErr(CodeInvalidKeyUsage, "%s is not a symmetric encryption key; %s needs one.", k.ARN, action[len("kms:"):])
	}
	if in.DryRun {
		return nil, dryRun()
	}
	if k, err = s.maybeRotate(c, k); err != nil {
		return nil, err
	}
	priv, err := generateKeyPair(s.cfg.Rand, in.KeyPairSpec)
	if err != nil {
		return nil, err
	}
	der, err := marshalPrivate(priv)
	if err != nil {
		return nil, err
	}
	signer, err := parsePrivate(in.KeyPairSpec, der)
	if err != nil {
		return nil, err
	}
	pub, err := marshalPublic(signer.Public())
	if err != nil {
		return nil, err
	}
	blob, err := s.encryptUnder(c, k, der, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	out := generateDataKeyPairOutput{KeyID: k.ARN, KeyPairSpec: in.KeyPairSpec, PublicKey: pub, PrivateKeyCiphertextBlob: blob}
	switch {
	case !withPlaintext:
	case att != nil:
		if out.CiphertextForRecipient, err = cms.Encrypt(s.cfg.Rand, att.spki, der); err != nil {
			return nil, err
		}
	default:
		out.PrivateKeyPlaintext = der
	}
	return out, nil
}

func (s *Server) generateDataKeyPair(c *call) (any, error) { return s.dataKeyPair(c, true) }
func (s *Server) generateDataKeyPairWithoutPlaintext(c *call) (any, error) {
	return s.dataKeyPair(c, false)
}

func (s *Server) deriveSharedSecret(c *call) (any, error) {
	var in deriveSharedSecretInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := checkEnum("keyAgreementAlgorithm", in.KeyAgreementAlgorithm, ecdhOnly); err != nil {
		return nil, err
	}
	if len(in.PublicKey) == 0 || len(in.PublicKey) > maxPublicKey {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value at 'publicKey' failed to satisfy constraint: Member must have length between 1 and %d", maxPublicKey)
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	att, err := s.checkRecipient(c, in.Recipient)
	if err != nil {
		return nil, err
	}
	k, err := s.cryptoKey(c, in.KeyID, "kms:DeriveSharedSecret", usageAgreement, nil, att)
	if err != nil {
		return nil, err
	}
	peer, err := parsePublic(in.PublicKey)
	if err != nil {
		return nil, apiErr(CodeValidation, "PublicKey is not a DER SubjectPublicKeyInfo: %v", err)
	}
	if in.DryRun {
		return nil, dryRun()
	}
	priv, err := s.keyPair(c, k)
	if err != nil {
		return nil, err
	}
	secret, err := ecdhShared(priv, peer)
	if err != nil {
		return nil, apiErr(CodeValidation, "PublicKey cannot be used with %s (%s): %v", k.ARN, k.KeySpec, err)
	}
	out := deriveSharedSecretOutput{KeyID: k.ARN, KeyAgreementAlgorithm: algECDH, KeyOrigin: "AWS_KMS"}
	if att != nil {
		if out.CiphertextForRecipient, err = cms.Encrypt(s.cfg.Rand, att.spki, secret); err != nil {
			return nil, err
		}
	} else {
		out.SharedSecret = secret
	}
	return out, nil
}
