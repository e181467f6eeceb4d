package eif

import (
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"hash"
	"io"
	"sync"
)

// PCRSize is the size of a SHA-384 PCR value.
const PCRSize = 48

// PCR is one SHA-384 platform configuration register value.
type PCR = [PCRSize]byte

// Measurements are the PCRs nitro-cli reports for an image. PCR8 is nil
// when the image is not signed.
type Measurements struct {
	PCR0 PCR // SHA384(0^48 ‖ SHA384(kernel ‖ cmdline ‖ every ramdisk))
	PCR1 PCR // SHA384(0^48 ‖ SHA384(kernel ‖ cmdline ‖ first ramdisk))
	PCR2 PCR // SHA384(0^48 ‖ SHA384(other ramdisks))
	PCR8 *PCR
}

// Extend returns SHA384(old ‖ data), the TPM-style extend of a SHA-384 register.
func Extend(old PCR, data []byte) PCR {
	h := sha512.New384()
	h.Write(old[:])
	h.Write(data)
	var out PCR
	h.Sum(out[:0])
	return out
}

// extendDigest returns the PCR obtained by extending a zero register with
// the digest held by h (nitro's tpm_extend_finalize_reset).
func extendDigest(h hash.Hash) PCR {
	var zero PCR
	return Extend(zero, h.Sum(nil))
}

// PCRFromReader returns `nitro-cli pcr --input` for the content of r:
// SHA384(0^48 ‖ SHA384(content)).
func PCRFromReader(r io.Reader) (PCR, error) {
	h := sha512.New384()
	if _, err := io.Copy(h, r); err != nil {
		return PCR{}, fmt.Errorf("eif: pcr: %w", err)
	}
	return extendDigest(h), nil
}

// PCRFromBytes is [PCRFromReader] for a byte slice.
func PCRFromBytes(b []byte) PCR {
	d := sha512.Sum384(b)
	return Extend(PCR{}, d[:])
}

// ParseCertificate parses a certificate given as PEM (the first
// CERTIFICATE block) or DER.
func ParseCertificate(b []byte) (*x509.Certificate, error) {
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: PEM block %q, want CERTIFICATE", ErrCertificate, blk.Type)
		}
		der = blk.Bytes
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCertificate, err)
	}
	return c, nil
}

// PCR8FromCertificate returns PCR8 for a signing certificate given as PEM
// or DER: SHA384(0^48 ‖ SHA384(DER)) (`nitro-cli pcr --signing-certificate`).
func PCR8FromCertificate(cert []byte) (PCR, error) {
	c, err := ParseCertificate(cert)
	if err != nil {
		return PCR{}, err
	}
	return PCRFromBytes(c.Raw), nil
}

// PCR3ForRoleARN returns the PCR3 a Nitro hypervisor reports for an
// instance with the given IAM role ARN: SHA384(0^48 ‖ ARN bytes) — the raw
// string is extended, not its digest.
func PCR3ForRoleARN(arn string) PCR { return Extend(PCR{}, []byte(arn)) }

// PCR4ForInstanceID returns the PCR4 for an EC2 instance ID:
// SHA384(0^48 ‖ instance-id bytes).
func PCR4ForInstanceID(id string) PCR { return Extend(PCR{}, []byte(id)) }

// Measurer computes PCR0, PCR1 and PCR2 incrementally while sections are
// streamed in file order: call [Measurer.BeginSection] before each
// section's data and Write the data. Metadata and signature data are
// ignored, as nitro-cli does. Large writes hash PCR0 and PCR1/PCR2
// concurrently. A Measurer is not safe for concurrent use.
type Measurer struct {
	pcr0, boot, app hash.Hash
	cur             SectionType
	ramdisks        int
	certDER         []byte
}

// NewMeasurer returns an empty Measurer.
func NewMeasurer() *Measurer {
	return &Measurer{pcr0: sha512.New384(), boot: sha512.New384(), app: sha512.New384()}
}

// BeginSection announces that the following writes are the data of a
// section of type t.
func (m *Measurer) BeginSection(t SectionType) {
	m.cur = t
	if t == SectionRamdisk {
		m.ramdisks++
	}
}

// SetSigningCertificate records the DER certificate that determines PCR8.
func (m *Measurer) SetSigningCertificate(der []byte) { m.certDER = append([]byte(nil), der...) }

// parallelMin is the smallest write hashed on two goroutines.
const parallelMin = 64 << 10

// Write feeds section data to the registers it belongs to. It never fails.
func (m *Measurer) Write(p []byte) (int, error) {
	var second hash.Hash
	switch m.cur {
	case SectionKernel, SectionCmdline:
		second = m.boot
	case SectionRamdisk:
		second = m.boot
		if m.ramdisks > 1 {
			second = m.app
		}
	default:
		return len(p), nil
	}
	if len(p) < parallelMin {
		m.pcr0.Write(p)
		second.Write(p)
		return len(p), nil
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		second.Write(p)
	}()
	m.pcr0.Write(p)
	wg.Wait()
	return len(p), nil
}

// Sum returns the measurements of everything written so far.
func (m *Measurer) Sum() Measurements {
	ms := Measurements{PCR0: extendDigest(m.pcr0), PCR1: extendDigest(m.boot), PCR2: extendDigest(m.app)}
	if m.certDER != nil {
		p := PCRFromBytes(m.certDER)
		ms.PCR8 = &p
	}
	return ms
}

// Measure returns img's measurements. PCR8 is set when img has a signature
// section, from the DER form of the certificate it holds; a malformed
// signature section is an error wrapping ErrSignature or ErrCertificate.
func Measure(img *Image) (Measurements, error) {
	m := NewMeasurer()
	for _, s := range img.Sections {
		m.BeginSection(s.Type)
		m.Write(s.Data)
		if s.Type == SectionSignature {
			sig, err := DecodeSignatureSection(s.Data)
			if err != nil {
				return Measurements{}, err
			}
			c, err := ParseCertificate(sig.CertificatePEM)
			if err != nil {
				return Measurements{}, err
			}
			m.SetSigningCertificate(c.Raw)
		}
	}
	return m.Sum(), nil
}
