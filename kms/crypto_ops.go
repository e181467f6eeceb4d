package kms

import (
	"errors"
	"io"

	"github.com/cloister/cloister/kms/cms"
	"github.com/cloister/cloister/kms/store"
)

// Symmetric cryptographic operations: Encrypt, Decrypt, ReEncrypt, data keys, GenerateRandom.

// encryptUnder encrypts plaintext with the key's current material.
func (s *Server) encryptUnder(c *call, k store.Key, plaintext []byte, ec map[string]string) ([]byte, error) {
	m, err := s.cfg.Store.Material(c.ctx, k.ID, k.CurrentVersion)
	if err != nil {
		return nil, err
	}
	return sealBlob(s.cfg.Rand, k.ID, k.CurrentVersion, m, plaintext, ec)
}

// openCiphertext parses a blob, resolves its key (checking it against
// keyID when given), authorizes action and decrypts.
func (s *Server) openCiphertext(c *call, blob []byte, keyID string, ec map[string]string, action string, att *attestedRecipient) (store.Key, []byte, error) {
	if len(blob) == 0 || len(blob) > maxCiphertext {
		return store.Key{}, nil, apiErr(CodeValidation, "CiphertextBlob must be 1 to %d bytes", maxCiphertext)
	}
	h, err := parseBlob(blob)
	if err != nil {
		return store.Key{}, nil, apiErr(CodeInvalidCiphertext, "%v", err)
	}
	k, err := s.cfg.Store.GetKey(c.ctx, h.keyID)
	if errors.Is(err, store.ErrNotFound) {
		return store.Key{}, nil, apiErr(CodeInvalidCiphertext, "the key that encrypted this ciphertext does not exist")
	}
	if err != nil {
		return store.Key{}, nil, err
	}
	c.audit.keyID = k.ARN
	if keyID != "" {
		want, err := s.resolveKey(c, keyID)
		if err != nil {
			return store.Key{}, nil, err
		}
		if want.ID != k.ID {
			return store.Key{}, nil, apiErr(CodeIncorrectKey, "The key ID in the request does not identify a KMS key that can perform this operation.")
		}
	}
	if err := s.authorize(c, k, action, ec, att); err != nil {
		return store.Key{}, nil, err
	}
	if err := usable(k); err != nil {
		return store.Key{}, nil, err
	}
	m, err := s.cfg.Store.Material(c.ctx, k.ID, h.version)
	if errors.Is(err, store.ErrNotFound) {
		return store.Key{}, nil, apiErr(CodeInvalidCiphertext, "the key material version of this ciphertext does not exist")
	}
	if err != nil {
		return store.Key{}, nil, err
	}
	pt, err := openBlob(h, m, ec)
	if err != nil {
		return store.Key{}, nil, apiErr(CodeInvalidCiphertext, "%v", err)
	}
	return k, pt, nil
}

func (s *Server) encrypt(c *call) (any, error) {
	var in encryptInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if len(in.Plaintext) == 0 || len(in.Plaintext) > maxPlaintext {
		return nil, apiErr(CodeValidation, "Plaintext must be 1 to %d bytes", maxPlaintext)
	}
	if err := validateContext(in.EncryptionContext); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	k, err := s.cryptoKey(c, in.KeyID, "kms:Encrypt", usageEncrypt, in.EncryptionContext, nil)
	if err != nil {
		return nil, err
	}
	alg, err := encryptionAlgorithm(k, in.EncryptionAlgorithm)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, err := s.encryptWith(c, k, alg, in.Plaintext, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	return encryptOutput{CiphertextBlob: blob, KeyID: k.ARN, EncryptionAlgorithm: alg}, nil
}

// encryptWith encrypts under k with alg (already checked for k): a
// Cloister blob under the current material for SYMMETRIC_DEFAULT (after a
// due rotation), raw RSAES-OAEP otherwise.
func (s *Server) encryptWith(c *call, k store.Key, alg string, pt []byte, ec map[string]string) ([]byte, error) {
	if alg != symmetricDefault {
		return s.rsaEncrypt(c, k, alg, pt, ec)
	}
	k, err := s.maybeRotate(c, k)
	if err != nil {
		return nil, err
	}
	return s.encryptUnder(c, k, pt, ec)
}

// decryptAny decrypts a ciphertext: a Cloister blob names its symmetric
// key (checked against keyID when given); anything else is an asymmetric
// ciphertext, which needs keyID and the algorithm, as on AWS.
func (s *Server) decryptAny(c *call, blob []byte, keyID, alg string, ec map[string]string, action string, att *attestedRecipient) (store.Key, []byte, string, error) {
	if len(blob) == 0 || len(blob) > maxCiphertext {
		return store.Key{}, nil, "", apiErr(CodeValidation, "CiphertextBlob must be 1 to %d bytes", maxCiphertext)
	}
	if alg != "" {
		if err := checkEnum("encryptionAlgorithm", alg, allEncryptionAlgorithms); err != nil {
			return store.Key{}, nil, "", err
		}
	}
	if _, err := parseBlob(blob); err == nil || keyID == "" {
		if alg != "" && alg != symmetricDefault {
			return store.Key{}, nil, "", apiErr(CodeValidation, "KeyId is required to decrypt with %s (an asymmetric KMS key)", alg)
		}
		k, pt, err := s.openCiphertext(c, blob, keyID, ec, action, att)
		return k, pt, symmetricDefault, err
	}
	k, err := s.cryptoKey(c, keyID, action, usageEncrypt, ec, att)
	if err != nil {
		return store.Key{}, nil, "", err
	}
	if alg, err = encryptionAlgorithm(k, alg); err != nil {
		return store.Key{}, nil, "", err
	}
	if alg == symmetricDefault {
		return store.Key{}, nil, "", apiErr(CodeInvalidCiphertext, "the ciphertext is not a ciphertext of this key service")
	}
	pt, err := s.rsaDecrypt(c, k, alg, blob, ec)
	if err != nil {
		return store.Key{}, nil, "", err
	}
	return k, pt, alg, nil
}

func checkDryRunModifiers(m []string) error {
	for _, v := range m {
		if err := checkEnum("dryRunModifiers", v, []string{"IGNORE_CIPHERTEXT"}); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) decrypt(c *call) (any, error) {
	var in decryptInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := validateContext(in.EncryptionContext); err != nil {
		return nil, err
	}
	if err := checkDryRunModifiers(in.DryRunModifiers); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	att, err := s.checkRecipient(c, in.Recipient)
	if err != nil {
		return nil, err
	}
	k, pt, alg, err := s.decryptAny(c, in.CiphertextBlob, in.KeyID, in.EncryptionAlgorithm, in.EncryptionContext, "kms:Decrypt", att)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	out := decryptOutput{KeyID: k.ARN, EncryptionAlgorithm: alg}
	if att != nil {
		if out.CiphertextForRecipient, err = cms.Encrypt(s.cfg.Rand, att.spki, pt); err != nil {
			return nil, err
		}
	} else {
		out.Plaintext = pt
	}
	return out, nil
}

func (s *Server) reEncrypt(c *call) (any, error) {
	var in reEncryptInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := validateContext(in.SourceEncryptionContext); err != nil {
		return nil, err
	}
	if err := validateContext(in.DestinationEncryptionContext); err != nil {
		return nil, err
	}
	if err := checkDryRunModifiers(in.DryRunModifiers); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	dst, err := s.resolveKey(c, in.DestinationKeyID)
	if err != nil {
		return nil, err
	}
	src, pt, srcAlg, err := s.decryptAny(c, in.CiphertextBlob, in.SourceKeyID, in.SourceEncryptionAlgorithm, in.SourceEncryptionContext, "kms:ReEncryptFrom", nil)
	if err != nil {
		return nil, err
	}
	c.audit.keyID = src.ARN + " -> " + dst.ARN
	if err := s.authorize(c, dst, "kms:ReEncryptTo", in.DestinationEncryptionContext, nil); err != nil {
		return nil, err
	}
	if err := usable(dst); err != nil {
		return nil, err
	}
	if err := wantUsage(dst, usageEncrypt, "ReEncrypt"); err != nil {
		return nil, err
	}
	dstAlg, err := encryptionAlgorithm(dst, in.DestinationEncryptionAlgorithm)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, err := s.encryptWith(c, dst, dstAlg, pt, in.DestinationEncryptionContext)
	if err != nil {
		return nil, err
	}
	return reEncryptOutput{CiphertextBlob: blob, SourceKeyID: src.ARN, KeyID: dst.ARN,
		SourceEncryptionAlgorithm: srcAlg, DestinationEncryptionAlgorithm: dstAlg}, nil
}

// dataKeySize validates NumberOfBytes/KeySpec: exactly one, 1..1024 bytes
// or AES_128/AES_256.
func dataKeySize(n *int, spec *string) (int, error) {
	switch {
	case n != nil && spec != nil:
		return 0, apiErr(CodeValidation, "specify either KeySpec or NumberOfBytes, not both")
	case n != nil:
		if *n < 1 || *n > 1024 {
			return 0, apiErr(CodeValidation, "NumberOfBytes must be between 1 and 1024")
		}
		return *n, nil
	case spec != nil:
		switch *spec {
		case "AES_256":
			return 32, nil
		case "AES_128":
			return 16, nil
		}
		return 0, apiErr(CodeValidation, "KeySpec %q must be AES_256 or AES_128", *spec)
	}
	return 0, apiErr(CodeValidation, "specify either KeySpec or NumberOfBytes")
}

func (s *Server) dataKey(c *call, in generateDataKeyInput, action string) (store.Key, []byte, []byte, *attestedRecipient, error) {
	n, err := dataKeySize(in.NumberOfBytes, in.KeySpec)
	if err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	if err := validateContext(in.EncryptionContext); err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	att, err := s.checkRecipient(c, in.Recipient)
	if err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	k, err := s.cryptoKey(c, in.KeyID, action, usageEncrypt, in.EncryptionContext, att)
	if err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	if k.KeySpec != symmetricDefault {
		return store.Key{}, nil, nil, nil, apiErr(CodeInvalidKeyUsage, "%s is not a symmetric encryption key; %s needs one.", k.ARN, action[len("kms:"):])
	}
	if in.DryRun {
		return store.Key{}, nil, nil, nil, dryRun()
	}
	if k, err = s.maybeRotate(c, k); err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	pt := make([]byte, n)
	if _, err := io.ReadFull(s.cfg.Rand, pt); err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	blob, err := s.encryptUnder(c, k, pt, in.EncryptionContext)
	if err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	return k, pt, blob, att, nil
}

func (s *Server) generateDataKey(c *call) (any, error) {
	var in generateDataKeyInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	k, pt, blob, att, err := s.dataKey(c, in, "kms:GenerateDataKey")
	if err != nil {
		return nil, err
	}
	out := generateDataKeyOutput{CiphertextBlob: blob, KeyID: k.ARN}
	if att != nil {
		if out.CiphertextForRecipient, err = cms.Encrypt(s.cfg.Rand, att.spki, pt); err != nil {
			return nil, err
		}
	} else {
		out.Plaintext = pt
	}
	return out, nil
}

func (s *Server) generateDataKeyWithoutPlaintext(c *call) (any, error) {
	var in generateDataKeyInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.Recipient != nil {
		return nil, apiErr(CodeValidation, "GenerateDataKeyWithoutPlaintext does not take a Recipient")
	}
	k, _, blob, _, err := s.dataKey(c, in, "kms:GenerateDataKeyWithoutPlaintext")
	if err != nil {
		return nil, err
	}
	return generateDataKeyOutput{CiphertextBlob: blob, KeyID: k.ARN}, nil
}

// generateRandom is allowed to every authenticated principal (AWS gates it
// with IAM policies, which Cloister does not model); a Recipient must
// still verify and then receives the bytes enveloped.
func (s *Server) generateRandom(c *call) (any, error) {
	var in generateRandomInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.NumberOfBytes == nil || *in.NumberOfBytes < 1 || *in.NumberOfBytes > 1024 {
		return nil, apiErr(CodeValidation, "NumberOfBytes must be between 1 and 1024")
	}
	if in.CustomKeyStoreID != "" {
		return nil, apiErr(CodeUnsupportedOperation, "custom key stores are not supported")
	}
	att, err := s.checkRecipient(c, in.Recipient)
	if err != nil {
		return nil, err
	}
	b := make([]byte, *in.NumberOfBytes)
	if _, err := io.ReadFull(s.cfg.Rand, b); err != nil {
		return nil, err
	}
	c.audit.reason = "GenerateRandom is allowed to every authenticated principal"
	if att != nil {
		ct, err := cms.Encrypt(s.cfg.Rand, att.spki, b)
		if err != nil {
			return nil, err
		}
		return generateRandomOutput{CiphertextForRecipient: ct}, nil
	}
	return generateRandomOutput{Plaintext: b}, nil
}
