package attest

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"crypto/x509"
)

// AWSRootSHA256 is the SHA-256 of the DER of the AWS Nitro Enclaves Root-G1
// certificate, as published by AWS ("Verifying the root of trust" in the
// Nitro Enclaves user guide) and recomputed on real documents' cabundle[0].
const AWSRootSHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

// awsRootPEM is root.pem from
// https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip
// (zip SHA-256 8cf60e2b2efca96c6a9e71e851d00c1b6991cc09eadbe64a6a1d1b1eb9faff7c):
// CN=aws.nitro-enclaves, OU=AWS, O=Amazon, C=US, valid 2019-10-28 to
// 2049-10-28, P-384. Its DER SHA-256 is [AWSRootSHA256]; init checks it.
//
//go:embed root.pem
var awsRootPEM []byte

var awsRoot = mustAWSRoot()

func mustAWSRoot() *x509.Certificate {
	blk, _ := pem.Decode(awsRootPEM)
	if blk == nil || blk.Type != "CERTIFICATE" {
		panic("attest: embedded root.pem holds no certificate")
	}
	sum := sha256.Sum256(blk.Bytes)
	if hex.EncodeToString(sum[:]) != AWSRootSHA256 {
		panic("attest: embedded root.pem does not match AWSRootSHA256")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		panic("attest: embedded root.pem: " + err.Error())
	}
	return c
}

// AWSRootCertificate returns a copy of the embedded AWS Nitro Enclaves
// Root-G1 certificate, whose DER SHA-256 equals [AWSRootSHA256].
func AWSRootCertificate() *x509.Certificate {
	c, err := x509.ParseCertificate(awsRoot.Raw)
	if err != nil { // cannot happen: parsed at init
		return nil
	}
	return c
}

// AWSRootPEM returns the embedded AWS root certificate in PEM form.
func AWSRootPEM() []byte { return append([]byte(nil), awsRootPEM...) }

// LoadRoots turns root specifications, as given to the CLI's repeatable
// --root flag, into trust roots. "aws" (any case) selects the embedded AWS
// root and sets includeAWS; any other value is the path of a PEM file holding
// one or more CERTIFICATE blocks, every one of which becomes a root. A file
// without certificates, or with a block that does not parse, is an error.
// An empty specs list yields includeAWS = true (the default trust).
func LoadRoots(specs []string) (roots []*x509.Certificate, includeAWS bool, err error) {
	if len(specs) == 0 {
		return nil, true, nil
	}
	for _, s := range specs {
		if strings.EqualFold(s, "aws") {
			includeAWS = true
			continue
		}
		b, err := os.ReadFile(s)
		if err != nil {
			return nil, false, fmt.Errorf("attest: read root %s: %w", s, err)
		}
		certs, err := ParseCertificatesPEM(b)
		if err != nil {
			return nil, false, fmt.Errorf("attest: root %s: %w", s, err)
		}
		roots = append(roots, certs...)
	}
	return roots, includeAWS, nil
}

// ParseCertificatesPEM returns every CERTIFICATE block of a PEM file. Other
// block types are skipped; no certificate at all is an error.
func ParseCertificatesPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return out, nil
}
