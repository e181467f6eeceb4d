package verifier

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// FuzzVerifyRequest feeds arbitrary content types, query strings and bodies
// to POST /v1/verify: the answer is a 200 appraisal or a 4xx problem, never
// a 5xx or a panic.
func FuzzVerifyRequest(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.cbor"))
	for _, name := range files {
		raw, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add("application/cbor", "time=2022-11-09T23:00:00Z", raw)
		f.Add("text/plain", "", []byte(hex.EncodeToString(raw)))
		env, _ := json.Marshal(VerifyRequest{Evidence: base64.StdEncoding.EncodeToString(raw), Time: "2024-09-07T14:37:39Z",
			Policy: json.RawMessage(`{"pcrs": {"0": "` + hex.EncodeToString(bytes.Repeat([]byte{1}, 48)) + `"}, "max_age": "5m"}`)})
		f.Add("application/json", "", env)
	}
	f.Add("application/json", "", []byte(`{"evidence": "hA==", "policy": "default", "nonce": "00", "challenge": true}`))
	f.Add("", "challenge=1&nonce=zz", []byte{0x84, 0x40, 0xa0, 0xf6, 0x40})
	f.Add("application/octet-stream; x=\"", "policy=%ff", []byte{0xd2, 0x84})

	s, err := New(Config{AllowTimeOverride: true, MaxBodyBytes: 64 << 10})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, contentType, query string, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/verify", bytes.NewReader(body))
		req.URL.RawQuery = query
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		switch {
		case rec.Code == http.StatusOK:
			var vr VerifyResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &vr); err != nil {
				t.Fatalf("200 with a body that is not a VerifyResponse: %v", err)
			}
			switch vr.Verdict {
			case StatusAffirming, StatusWarning, StatusContraindicated:
			default:
				t.Fatalf("verdict %q", vr.Verdict)
			}
			if vr.Token == "" {
				t.Fatal("200 without a token")
			}
		case rec.Code >= 400 && rec.Code < 500:
			if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("%d with Content-Type %q", rec.Code, ct)
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
	})
}
