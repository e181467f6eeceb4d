package eif

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// HashAlgorithm is the "HashAlgorithm" string nitro-cli prints (Rust's
// Debug form of its Sha384 hasher).
const HashAlgorithm = "Sha384 { ... }"

// MarshalJSON encodes m as nitro-cli's Measurements object: keys
// HashAlgorithm, PCR0, PCR1, PCR2 and, when signed, PCR8, in that
// (sorted) order, values in lower-case hex.
func (m Measurements) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"HashAlgorithm":%q,"PCR0":"%x","PCR1":"%x","PCR2":"%x"`, HashAlgorithm, m.PCR0, m.PCR1, m.PCR2)
	if m.PCR8 != nil {
		fmt.Fprintf(&b, `,"PCR8":"%x"`, *m.PCR8)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON decodes nitro-cli's Measurements object. It requires
// PCR0-2 and accepts an optional PCR8, each 96 hex digits.
func (m *Measurements) UnmarshalJSON(b []byte) error {
	var raw map[string]string
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	var out Measurements
	for _, k := range []string{"PCR0", "PCR1", "PCR2", "PCR8"} {
		v, ok := raw[k]
		if !ok {
			if k == "PCR8" {
				continue
			}
			return fmt.Errorf("eif: measurements: missing %s", k)
		}
		d, err := hex.DecodeString(v)
		if err != nil || len(d) != PCRSize {
			return fmt.Errorf("eif: measurements: %s is not 48 hex bytes", k)
		}
		var p PCR
		copy(p[:], d)
		switch k {
		case "PCR0":
			out.PCR0 = p
		case "PCR1":
			out.PCR1 = p
		case "PCR2":
			out.PCR2 = p
		case "PCR8":
			out.PCR8 = &p
		}
	}
	*m = out
	return nil
}

// BuildInfo is the output of build-enclave and sign-eif: {"Measurements":{…}}.
type BuildInfo struct {
	Measurements Measurements `json:"Measurements"`
}

// CertificateInfo is describe-eif's SigningCertificate object, formatted
// as nitro-cli formats it with OpenSSL.
type CertificateInfo struct {
	// IssuerName maps OpenSSL long attribute names ("commonName",
	// "countryName", …; dotted OID when unknown) to values; JSON keys sorted.
	IssuerName map[string]string `json:"IssuerName"`
	// Algorithm is the OpenSSL name of the certificate's signature
	// algorithm, e.g. "ecdsa-with-SHA384".
	Algorithm string `json:"Algorithm"`
	// NotBefore and NotAfter use OpenSSL's ASN1_TIME_print form, e.g.
	// "Mar  4 05:06:07 2025 GMT".
	NotBefore string `json:"NotBefore"`
	NotAfter  string `json:"NotAfter"`
	// Signature is the certificate's signature bytes as upper-case hex
	// pairs separated by colons ("3A:0F:…").
	Signature string `json:"Signature"`
}

var oidLongNames = map[string]string{
	"2.5.4.3":                    "commonName",
	"2.5.4.4":                    "surname",
	"2.5.4.5":                    "serialNumber",
	"2.5.4.6":                    "countryName",
	"2.5.4.7":                    "localityName",
	"2.5.4.8":                    "stateOrProvinceName",
	"2.5.4.9":                    "streetAddress",
	"2.5.4.10":                   "organizationName",
	"2.5.4.11":                   "organizationalUnitName",
	"2.5.4.12":                   "title",
	"2.5.4.17":                   "postalCode",
	"2.5.4.42":                   "givenName",
	"2.5.4.43":                   "initials",
	"2.5.4.44":                   "generationQualifier",
	"2.5.4.46":                   "dnQualifier",
	"2.5.4.65":                   "pseudonym",
	"1.2.840.113549.1.9.1":       "emailAddress",
	"0.9.2342.19200300.100.1.1":  "userId",
	"0.9.2342.19200300.100.1.25": "domainComponent",
}

var sigAlgNames = map[x509.SignatureAlgorithm]string{
	x509.ECDSAWithSHA1:    "ecdsa-with-SHA1",
	x509.ECDSAWithSHA256:  "ecdsa-with-SHA256",
	x509.ECDSAWithSHA384:  "ecdsa-with-SHA384",
	x509.ECDSAWithSHA512:  "ecdsa-with-SHA512",
	x509.SHA1WithRSA:      "sha1WithRSAEncryption",
	x509.SHA256WithRSA:    "sha256WithRSAEncryption",
	x509.SHA384WithRSA:    "sha384WithRSAEncryption",
	x509.SHA512WithRSA:    "sha512WithRSAEncryption",
	x509.SHA256WithRSAPSS: "rsassaPss",
	x509.SHA384WithRSAPSS: "rsassaPss",
	x509.SHA512WithRSAPSS: "rsassaPss",
	x509.PureEd25519:      "ED25519",
}

// asn1TimePrint formats t as OpenSSL's ASN1_TIME_print does.
func asn1TimePrint(t time.Time) string { return t.UTC().Format("Jan _2 15:04:05 2006 GMT") }

// CertificateInfoOf returns describe-eif's SigningCertificate object for c.
func CertificateInfoOf(c *x509.Certificate) CertificateInfo {
	issuer := map[string]string{}
	for _, atv := range c.Issuer.Names {
		name, ok := oidLongNames[atv.Type.String()]
		if !ok {
			name = atv.Type.String()
		}
		v := fmt.Sprint(atv.Value)
		// nitro-cli prints Rust's Debug form of the string with the
		// quotes removed: backslashes come out doubled.
		issuer[name] = strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), `"`, `\`)
	}
	alg, ok := sigAlgNames[c.SignatureAlgorithm]
	if !ok {
		alg = sigAlgOID(c)
	}
	sig := make([]string, len(c.Signature))
	for i, b := range c.Signature {
		sig[i] = fmt.Sprintf("%02X", b)
	}
	return CertificateInfo{
		IssuerName: issuer,
		Algorithm:  alg,
		NotBefore:  asn1TimePrint(c.NotBefore),
		NotAfter:   asn1TimePrint(c.NotAfter),
		Signature:  strings.Join(sig, ":"),
	}
}

// sigAlgOID extracts the signature algorithm OID from the raw certificate.
func sigAlgOID(c *x509.Certificate) string {
	var cert struct {
		TBS    asn1.RawValue
		SigAlg struct {
			Algorithm asn1.ObjectIdentifier
			Params    asn1.RawValue `asn1:"optional"`
		}
		Sig asn1.BitString
	}
	if _, err := asn1.Unmarshal(c.Raw, &cert); err != nil {
		return "unknown"
	}
	return cert.SigAlg.Algorithm.String()
}

// Description is describe-eif's output. Its JSON form has nitro-cli's keys
// in nitro-cli's order; optional members are omitted when absent.
type Description struct {
	EifVersion         uint16
	Measurements       Measurements
	IsSigned           bool
	SigningCertificate *CertificateInfo
	CheckCRC           bool
	SignatureCheck     *bool
	ImageName          *string
	ImageVersion       *string
	Metadata           *Metadata
}

// Describe inspects img as `nitro-cli describe-eif` does: version,
// measurements, whether it is signed, the signing certificate's details,
// whether the CRC matches, whether the signature verifies (payload and
// COSE signature, not certificate validity), and the metadata section. A
// signature or metadata section that cannot be decoded is an error.
func Describe(img *Image) (*Description, error) {
	m, err := Measure(img)
	if err != nil {
		return nil, err
	}
	d := &Description{EifVersion: img.Header.Version, Measurements: m, CheckCRC: CheckCRC(img)}
	if sec := img.Section(SectionSignature); sec != nil {
		d.IsSigned = true
		ss, err := DecodeSignatureSection(sec.Data)
		if err != nil {
			return nil, err
		}
		c, err := ParseCertificate(ss.CertificatePEM)
		if err != nil {
			return nil, err
		}
		ci := CertificateInfoOf(c)
		d.SigningCertificate = &ci
		_, verr := VerifySignature(img, time.Time{})
		ok := verr == nil
		d.SignatureCheck = &ok
	}
	if sec := img.Section(SectionMetadata); sec != nil {
		md, err := ParseMetadata(sec.Data)
		if err != nil {
			return nil, err
		}
		d.ImageName, d.ImageVersion, d.Metadata = &md.ImageName, &md.ImageVersion, md
	}
	return d, nil
}

type jsonField struct {
	key string
	val any
}

func marshalOrdered(fields []jsonField) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		b.Write(k)
		b.WriteByte(':')
		v, err := marshalNoHTML(f.val)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func marshalNoHTML(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// MarshalJSON encodes d with nitro-cli's keys and order: EifVersion,
// Measurements, IsSigned, SigningCertificate?, CheckCRC, SignatureCheck?,
// ImageName?, ImageVersion?, Metadata? where Metadata holds BuildTime,
// BuildTool, BuildToolVersion, OperatingSystem, KernelVersion, DockerInfo
// and then the keys of CustomMetadata (sorted) flattened in.
func (d *Description) MarshalJSON() ([]byte, error) {
	f := []jsonField{{"EifVersion", d.EifVersion}, {"Measurements", d.Measurements}, {"IsSigned", d.IsSigned}}
	if d.SigningCertificate != nil {
		f = append(f, jsonField{"SigningCertificate", d.SigningCertificate})
	}
	f = append(f, jsonField{"CheckCRC", d.CheckCRC})
	if d.SignatureCheck != nil {
		f = append(f, jsonField{"SignatureCheck", *d.SignatureCheck})
	}
	if d.ImageName != nil {
		f = append(f, jsonField{"ImageName", *d.ImageName})
	}
	if d.ImageVersion != nil {
		f = append(f, jsonField{"ImageVersion", *d.ImageVersion})
	}
	if d.Metadata != nil {
		md, err := describeMetadata(d.Metadata)
		if err != nil {
			return nil, err
		}
		f = append(f, jsonField{"Metadata", md})
	}
	return marshalOrdered(f)
}

func describeMetadata(m *Metadata) (json.RawMessage, error) {
	docker := m.DockerInfo
	if len(bytes.TrimSpace(docker)) == 0 {
		docker = json.RawMessage("null")
	}
	f := []jsonField{
		{"BuildTime", m.BuildMetadata.BuildTime},
		{"BuildTool", m.BuildMetadata.BuildTool},
		{"BuildToolVersion", m.BuildMetadata.BuildToolVersion},
		{"OperatingSystem", m.BuildMetadata.OperatingSystem},
		{"KernelVersion", m.BuildMetadata.KernelVersion},
		{"DockerInfo", docker},
	}
	custom := bytes.TrimSpace(m.CustomMetadata)
	if len(custom) > 0 && !bytes.Equal(custom, []byte("null")) {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(custom, &obj); err == nil {
			keys := make([]string, 0, len(obj))
			for k := range obj {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				f = append(f, jsonField{k, obj[k]})
			}
		} else {
			f = append(f, jsonField{"CustomMetadata", json.RawMessage(custom)})
		}
	}
	return marshalOrdered(f)
}
