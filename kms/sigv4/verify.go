package sigv4

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors, one per failure class. Verify returns an *Error that
// wraps one of them and carries the AWS error code.
var (
	ErrMissingAuth = errors.New("sigv4: missing authentication")
	ErrIncomplete  = errors.New("sigv4: incomplete or malformed signature")
	ErrUnknownKey  = errors.New("sigv4: unknown access key")
	ErrSignature   = errors.New("sigv4: signature mismatch")
	ErrExpired     = errors.New("sigv4: request time outside the allowed skew")
)

// Error is a verification failure with the AWS JSON error code a service
// returns for it (all with HTTP status 400).
type Error struct {
	// Code is the AWS __type, e.g. "InvalidSignatureException".
	Code    string
	Message string
	Err     error // one of the sentinels
}

// Error returns the sentinel text and the AWS message.
func (e *Error) Error() string { return e.Err.Error() + ": " + e.Message }

// Unwrap returns the sentinel.
func (e *Error) Unwrap() error { return e.Err }

func fail(sentinel error, code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: sentinel}
}

const (
	algorithm   = "AWS4-HMAC-SHA256"
	amzDate     = "20060102T150405Z"
	shortDate   = "20060102"
	emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

// Config configures a Verifier. The zero value (plus Credentials) verifies
// service "kms" in any region with a 5-minute skew.
type Config struct {
	// Credentials are the accepted access keys.
	Credentials *Credentials
	// Service is the signing service name; default "kms".
	Service string
	// Region, when set, is the only accepted region in the credential scope.
	Region string
	// MaxSkew is the allowed difference between the request time and the
	// clock; default 5 minutes (AWS's value for JSON services).
	MaxSkew time.Duration
	// Clock returns the current time; default time.Now.
	Clock func() time.Time
}

// Verifier checks AWS Signature Version 4 header authentication as AWS
// does. Like AWS, it keeps no record of the signatures it accepted: SigV4
// authenticates a request, it is not a nonce, and the same signed request
// is accepted again while its time is within MaxSkew (clients such as boto3
// and the AWS CLI send identical requests within one second). A Verifier
// holds no state beyond its Config and is safe for concurrent use.
type Verifier struct {
	cfg Config
}

// NewVerifier returns a Verifier for cfg; Credentials must be non-empty.
func NewVerifier(cfg Config) (*Verifier, error) {
	if cfg.Credentials.Len() == 0 {
		return nil, errors.New("sigv4: no credentials configured")
	}
	if cfg.Service == "" {
		cfg.Service = "kms"
	}
	if cfg.MaxSkew <= 0 {
		cfg.MaxSkew = 5 * time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &Verifier{cfg: cfg}, nil
}

// authorization is the parsed Authorization header.
type authorization struct {
	accessKey, date, region, service string
	signedHeaders                    []string
	signature                        string
}

func parseAuthorization(h string) (authorization, *Error) {
	var a authorization
	rest, ok := strings.CutPrefix(h, algorithm+" ")
	if !ok {
		return a, fail(ErrIncomplete, "IncompleteSignatureException", "Authorization header requires the %s algorithm", algorithm)
	}
	var cred, signed string
	for _, part := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return a, fail(ErrIncomplete, "IncompleteSignatureException", "Authorization header component %q is not key=value", part)
		}
		switch k {
		case "Credential":
			cred = v
		case "SignedHeaders":
			signed = v
		case "Signature":
			a.signature = v
		default:
			return a, fail(ErrIncomplete, "IncompleteSignatureException", "unknown Authorization header component %q", k)
		}
	}
	if cred == "" || signed == "" || a.signature == "" {
		return a, fail(ErrIncomplete, "IncompleteSignatureException", "Authorization header requires Credential, SignedHeaders and Signature")
	}
	cp := strings.Split(cred, "/")
	if len(cp) != 5 || cp[4] != "aws4_request" || cp[0] == "" {
		return a, fail(ErrIncomplete, "IncompleteSignatureException", "Credential %q is not AKID/date/region/service/aws4_request", cred)
	}
	a.accessKey, a.date, a.region, a.service = cp[0], cp[1], cp[2], cp[3]
	a.signedHeaders = strings.Split(signed, ";")
	if !sort.StringsAreSorted(a.signedHeaders) {
		return a, fail(ErrIncomplete, "IncompleteSignatureException", "SignedHeaders are not sorted")
	}
	if len(a.signature) != 64 {
		return a, fail(ErrIncomplete, "IncompleteSignatureException", "Signature is not 64 hex characters")
	}
	if _, err := hex.DecodeString(a.signature); err != nil {
		return a, fail(ErrIncomplete, "IncompleteSignatureException", "Signature is not hex")
	}
	return a, nil
}

// Verify authenticates r, whose body the caller has already read into body
// (the request's own Body is not read). It checks, in order: an
// Authorization header with AWS4-HMAC-SHA256, Credential
// AKID/date/region/service/aws4_request, sorted SignedHeaders and a
// 64-hex-digit Signature (else IncompleteSignatureException; no header at
// all gives MissingAuthenticationTokenException); SignedHeaders include
// host, x-amz-date when that header carries the time, and x-amz-target when
// the request has one; the time (x-amz-date, else Date) parses and its day
// equals the credential scope's; service matches and region too when
// configured; the access key is known (UnrecognizedClientException); the
// request time is within MaxSkew of the clock (InvalidSignatureException
// "Signature expired"/"not yet current"); x-amz-content-sha256, when
// present, equals SHA-256(body); the signature recomputed over the
// canonical request (signed headers only, values trimmed and
// space-collapsed, the body's SHA-256) matches in constant time
// (InvalidSignatureException). It does not refuse a request it has seen
// before: as on AWS, a signed request may be sent again within the skew
// window. x-amz-security-token is accepted as an ordinary signed header and
// not otherwise checked. It returns the matching credential.
func (v *Verifier) Verify(r *http.Request, body []byte) (Credential, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		if r.URL.Query().Get("X-Amz-Signature") != "" {
			return Credential{}, fail(ErrIncomplete, "IncompleteSignatureException", "query-string (presigned) authentication is not supported")
		}
		return Credential{}, fail(ErrMissingAuth, "MissingAuthenticationTokenException", "Missing Authentication Token")
	}
	a, e := parseAuthorization(h)
	if e != nil {
		return Credential{}, e
	}
	has := func(name string) bool {
		i := sort.SearchStrings(a.signedHeaders, name)
		return i < len(a.signedHeaders) && a.signedHeaders[i] == name
	}
	if !has("host") {
		return Credential{}, fail(ErrIncomplete, "IncompleteSignatureException", "SignedHeaders must include host")
	}
	if r.Header.Get("X-Amz-Target") != "" && !has("x-amz-target") {
		return Credential{}, fail(ErrIncomplete, "IncompleteSignatureException", "SignedHeaders must include x-amz-target")
	}
	var when time.Time
	if d := r.Header.Get("X-Amz-Date"); d != "" {
		if !has("x-amz-date") {
			return Credential{}, fail(ErrIncomplete, "IncompleteSignatureException", "SignedHeaders must include x-amz-date")
		}
		t, err := time.Parse(amzDate, d)
		if err != nil {
			return Credential{}, fail(ErrIncomplete, "IncompleteSignatureException", "X-Amz-Date %q is not in ISO 8601 basic format", d)
		}
		when = t
	} else if d := r.Header.Get("Date"); d != "" && has("date") {
		t, err := http.ParseTime(d)
		if err != nil {
			return Credential{}, fail(ErrIncomplete, "IncompleteSignatureException", "Date header %q does not parse", d)
		}
		when = t.UTC()
	} else {
		return Credential{}, fail(ErrIncomplete, "IncompleteSignatureException", "a signed X-Amz-Date or Date header is required")
	}
	if when.Format(shortDate) != a.date {
		return Credential{}, fail(ErrSignature, "InvalidSignatureException", "credential scope date %s does not match the request date %s", a.date, when.Format(shortDate))
	}
	if a.service != v.cfg.Service {
		return Credential{}, fail(ErrSignature, "InvalidSignatureException", "credential scope service %q should be %q", a.service, v.cfg.Service)
	}
	if v.cfg.Region != "" && a.region != v.cfg.Region {
		return Credential{}, fail(ErrSignature, "InvalidSignatureException", "credential scope region %q should be %q", a.region, v.cfg.Region)
	}
	cred, ok := v.cfg.Credentials.Lookup(a.accessKey)
	if !ok {
		return Credential{}, fail(ErrUnknownKey, "UnrecognizedClientException", "The security token included in the request is invalid.")
	}
	now := v.cfg.Clock().UTC()
	skewMin := int(v.cfg.MaxSkew / time.Minute)
	if when.Before(now.Add(-v.cfg.MaxSkew)) {
		return Credential{}, fail(ErrExpired, "InvalidSignatureException", "Signature expired: %s is now earlier than %s (%s - %d min.)",
			when.Format(amzDate), now.Add(-v.cfg.MaxSkew).Format(amzDate), now.Format(amzDate), skewMin)
	}
	if when.After(now.Add(v.cfg.MaxSkew)) {
		return Credential{}, fail(ErrExpired, "InvalidSignatureException", "Signature not yet current: %s is still later than %s (%s + %d min.)",
			when.Format(amzDate), now.Add(v.cfg.MaxSkew).Format(amzDate), now.Format(amzDate), skewMin)
	}
	sum := sha256.Sum256(body)
	payloadHash := hex.EncodeToString(sum[:])
	if ph := r.Header.Get("X-Amz-Content-Sha256"); ph != "" && !strings.EqualFold(ph, payloadHash) {
		return Credential{}, fail(ErrSignature, "InvalidSignatureException", "x-amz-content-sha256 does not match the request body")
	}
	canonical := canonicalRequest(r, a.signedHeaders, payloadHash)
	scope := a.date + "/" + a.region + "/" + a.service + "/aws4_request"
	crHash := sha256.Sum256([]byte(canonical))
	toSign := algorithm + "\n" + when.Format(amzDate) + "\n" + scope + "\n" + hex.EncodeToString(crHash[:])
	key := signingKey(cred.SecretAccessKey, a.date, a.region, a.service)
	want := hmacSHA256(key, []byte(toSign))
	got, _ := hex.DecodeString(a.signature)
	if !hmac.Equal(want, got) {
		return Credential{}, fail(ErrSignature, "InvalidSignatureException",
			"The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
	}
	return cred, nil
}

func hmacSHA256(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

func signingKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte(service))
	return hmacSHA256(k, []byte("aws4_request"))
}

// canonicalRequest builds the SigV4 canonical request for r.
func canonicalRequest(r *http.Request, signed []string, payloadHash string) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	b.WriteString(canonicalURI(r.URL))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.Query()))
	b.WriteByte('\n')
	for _, name := range signed {
		b.WriteString(name)
		b.WriteByte(':')
		var vals []string
		switch name {
		case "host":
			vals = []string{r.Host}
		case "content-length":
			if r.ContentLength >= 0 {
				vals = []string{strconv.FormatInt(r.ContentLength, 10)}
			}
		default:
			vals = r.Header.Values(name)
		}
		for i, val := range vals {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strings.Join(strings.Fields(val), " "))
		}
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(signed, ";"))
	b.WriteByte('\n')
	b.WriteString(payloadHash)
	return b.String()
}

// canonicalURI is the path as sent, with each byte outside the unreserved
// set (and '/') percent-encoded once more, as non-S3 services expect.
func canonicalURI(u *url.URL) string {
	p := u.EscapedPath()
	if p == "" {
		return "/"
	}
	return uriEncode(p, false)
}

func canonicalQuery(q url.Values) string {
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		vals := append([]string{}, q[k]...)
		sort.Strings(vals)
		for _, v := range vals {
			parts = append(parts, uriEncode(k, true)+"="+uriEncode(v, true))
		}
	}
	return strings.Join(parts, "&")
}

// uriEncode percent-encodes every byte except A-Z a-z 0-9 - _ . ~ (and '/'
// unless encodeSlash).
func uriEncode(s string, encodeSlash bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		case c == '/' && !encodeSlash:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		}
	}
	return b.String()
}
