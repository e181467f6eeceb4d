package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/attest"
)

const verifyTestdata = "../../attest/testdata"

// runVerifyCLI runs `cloister verify args...` in-process and returns stdout
// and the exit status main would use.
func runVerifyCLI(t *testing.T, stdin []byte, args ...string) (stdout string, code int, err error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(bytes.NewReader(stdin))
	root.SetArgs(append([]string{"verify"}, args...))
	err = root.Execute()
	code = 0
	if err != nil {
		code = 2
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
	}
	return out.String(), code, err
}

type verifyJSON struct {
	ModuleID     string            `json:"module_id"`
	Timestamp    string            `json:"timestamp"`
	Digest       string            `json:"digest"`
	PCRs         map[string]string `json:"pcrs"`
	UserData     *string           `json:"user_data"`
	Nonce        *string           `json:"nonce"`
	PublicKey    *string           `json:"public_key"`
	Debug        bool              `json:"debug"`
	Certificates []struct {
		Subject   string `json:"subject"`
		NotBefore string `json:"not_before"`
		NotAfter  string `json:"not_after"`
	} `json:"certificates"`
	Policy struct {
		OK     bool `json:"ok"`
		Checks []struct {
			Check  string `json:"check"`
			OK     bool   `json:"ok"`
			Detail string `json:"detail"`
		} `json:"checks"`
	} `json:"policy"`
}

func TestVerifyCommand(t *testing.T) {
	vera := filepath.Join(verifyTestdata, "veracruz-go-1.cbor")
	const veraAt = "2022-11-09T23:00:00Z"
	const veraPCR0 = "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482152a99d0a12335b97178c02d6f977d01"
	const veraNonce = "c678c86135de539d183acff58886d98dfb9823041af9f934bf909ac0f8d96245"
	raw, err := os.ReadFile(vera)
	if err != nil {
		t.Fatal(err)
	}
	b64 := []byte(base64.StdEncoding.EncodeToString(raw) + "\n")

	iss, err := attest.NewIssuer(attest.IssuerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rootPEM := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(rootPEM, append(iss.RootPEM(), attest.AWSRootPEM()...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "devonly.pem"), iss.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	devDoc, err := iss.Issue(attest.IssueRequest{PCRs: map[int][]byte{0: bytes.Repeat([]byte{1}, 48)}, Nonce: []byte{0xab}})
	if err != nil {
		t.Fatal(err)
	}
	devFile := filepath.Join(dir, "dev.hex")
	if err := os.WriteFile(devFile, []byte(strings.ToUpper(hex.EncodeToString(devDoc))), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		stdin    []byte
		args     []string
		code     int
		errIs    error    // sentinel the error must wrap (code 1)
		errHas   []string // substrings of the error message
		outHas   []string // substrings of stdout
		emptyOut bool
	}{
		{name: "valid", args: []string{"--at", veraAt, vera}, outHas: []string{"i-04fd167167daacf3b-enc01845e97d0b3eb4e", "policy: ACCEPTED", veraPCR0}},
		{name: "valid unix seconds", args: []string{"--at", "1668034800", vera}},
		{name: "valid base64 stdin", stdin: b64, args: []string{"--at", veraAt, "-"}},
		{name: "pcr and nonce match", args: []string{"--at", veraAt, "--pcr", "0=" + veraPCR0, "--nonce", veraNonce, vera}},
		{name: "pcr mismatch", args: []string{"--at", veraAt, "--pcr", "0=" + strings.Repeat("00", 48), vera}, code: 1,
			errIs: attest.ErrPCRMismatch, errHas: []string{"PCR0"}, outHas: []string{"FAIL  pcr0"}},
		{name: "pcr and nonce mismatch", args: []string{"--at", veraAt, "--pcr", "1=" + strings.Repeat("00", 48), "--nonce", "00", vera}, code: 1,
			errIs: attest.ErrNonce, errHas: []string{"PCR1", "nonce"}},
		{name: "expired now", args: []string{vera}, code: 1, errIs: attest.ErrExpired, errHas: []string{"--at"}, emptyOut: true},
		{name: "expired 4h later", args: []string{"--at", "2022-11-10T03:00:00Z", "--json", vera}, code: 1, errIs: attest.ErrExpired, emptyOut: true},
		{name: "bad signature", args: []string{"--at", veraAt, "--json", filepath.Join(verifyTestdata, "veracruz-go-2-badsig.cbor")},
			code: 1, errIs: attest.ErrSignature, emptyOut: true},
		{name: "debug rejected", args: []string{"--at", "2024-09-07T14:38:06.508Z", filepath.Join(verifyTestdata, "blocky-nitrite-2-debug.cbor")},
			code: 1, errIs: attest.ErrDebug, errHas: []string{"debug"}, outHas: []string{"policy: REJECTED"}},
		{name: "debug allowed", args: []string{"--at", "2024-09-07T14:38:06.508Z", "--allow-debug", filepath.Join(verifyTestdata, "blocky-nitrite-2-debug.cbor")}},
		{name: "max age ok", args: []string{"--at", veraAt, "--max-age", "10m", vera}},
		{name: "max age stale", args: []string{"--at", veraAt, "--max-age", "1m", vera}, code: 1, errIs: attest.ErrStale},
		{name: "dev doc default root", args: []string{devFile}, code: 1, errIs: attest.ErrUntrustedRoot, errHas: []string{"--root"}},
		{name: "dev doc with root", args: []string{"--root", rootPEM, "--nonce", "ab", devFile}},
		{name: "aws doc with dev root only", args: []string{"--root", filepath.Join(dir, "devonly.pem"), "--at", veraAt, vera}, code: 1, errIs: attest.ErrUntrustedRoot},
		{name: "missing root file", args: []string{"--root", filepath.Join(dir, "nope.pem"), vera}, code: 1},
		{name: "aws doc with dev root and aws", args: []string{"--root", rootPEM, "--root", "aws", "--at", veraAt, vera}},
		{name: "garbage input", stdin: []byte("hello"), args: []string{"-"}, code: 1, errIs: attest.ErrMalformed},
		{name: "missing file", args: []string{filepath.Join(dir, "nope")}, code: 1},
		{name: "usage no args", args: nil, code: 2},
		{name: "usage bad at", args: []string{"--at", "yesterday", vera}, code: 2, errHas: []string{"--at"}},
		{name: "usage bad pcr index", args: []string{"--pcr", "32=" + veraPCR0, vera}, code: 2},
		{name: "usage bad pcr hex", args: []string{"--pcr", "0=zz", vera}, code: 2},
		{name: "usage bad pcr length", args: []string{"--pcr", "0=0011", vera}, code: 2},
		{name: "usage duplicate pcr", args: []string{"--pcr", "0=" + veraPCR0, "--pcr", "0=" + veraPCR0, vera}, code: 2},
		{name: "usage bad nonce", args: []string{"--nonce", "xyz", vera}, code: 2},
		{name: "usage negative max age", args: []string{"--max-age", "-1m", vera}, code: 2},
		{name: "usage unknown flag", args: []string{"--frobnicate", vera}, code: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, code, err := runVerifyCLI(t, tc.stdin, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d (err %v), want %d", code, err, tc.code)
			}
			if tc.errIs != nil && !errors.Is(err, tc.errIs) {
				t.Errorf("error %v, want %v", err, tc.errIs)
			}
			for _, s := range tc.errHas {
				if err == nil || !strings.Contains(err.Error(), s) {
					t.Errorf("error %v does not mention %q", err, s)
				}
			}
			for _, s := range tc.outHas {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
			if tc.emptyOut && out != "" {
				t.Errorf("stdout not empty:\n%s", out)
			}
		})
	}
}

func TestVerifyCommandJSON(t *testing.T) {
	// A debug document: claims are printed, the policy rejects.
	out, code, err := runVerifyCLI(t, nil, "--json", "--at", "2022-10-12T13:50:06.081Z",
		filepath.Join(verifyTestdata, "evervault-3-beta-debug.cbor"))
	if code != 1 || !errors.Is(err, attest.ErrDebug) {
		t.Fatalf("exit %d, %v; want 1 with ErrDebug", code, err)
	}
	var j verifyJSON
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, out)
	}
	if dec.More() {
		t.Error("more than one JSON value on stdout")
	}
	if j.ModuleID != "i-03ad7cdb817437eeb-enc0183cc7569b3f6e1" || j.Digest != "SHA384" || !j.Debug {
		t.Errorf("claims %+v", j)
	}
	if ts, err := time.Parse(time.RFC3339, j.Timestamp); err != nil || !ts.Equal(time.Date(2022, 10, 12, 13, 50, 6, 81e6, time.UTC)) {
		t.Errorf("timestamp %q (%v)", j.Timestamp, err)
	}
	if j.UserData == nil || *j.UserData != "68656c6c6f2c20776f726c6421" || j.Nonce != nil ||
		j.PublicKey == nil || *j.PublicKey != "6d7920737570657220736563726574206b6579" {
		t.Errorf("user_data %v nonce %v public_key %v", j.UserData, j.Nonce, j.PublicKey)
	}
	if len(j.PCRs) != 16 || j.PCRs["3"] != "4a9329d69c836267b18abbf9f4a38889124490453419e426818626348d21f989dc930b1562682a9082887454e53425aa" ||
		j.PCRs["0"] != strings.Repeat("00", 48) {
		t.Errorf("pcrs %v", j.PCRs)
	}
	if len(j.Certificates) != 5 || !strings.Contains(j.Certificates[4].Subject, "aws.nitro-enclaves") {
		t.Errorf("certificates %+v", j.Certificates)
	}
	for i, c := range j.Certificates {
		nb, err1 := time.Parse(time.RFC3339, c.NotBefore)
		na, err2 := time.Parse(time.RFC3339, c.NotAfter)
		if err1 != nil || err2 != nil || !nb.Before(na) {
			t.Errorf("certificate %d validity %q..%q", i, c.NotBefore, c.NotAfter)
		}
	}
	if j.Policy.OK || len(j.Policy.Checks) != 1 || j.Policy.Checks[0].Check != "debug" || j.Policy.Checks[0].OK {
		t.Errorf("policy %+v", j.Policy)
	}

	// Accepted with --allow-debug: same claims, policy OK.
	out, code, err = runVerifyCLI(t, nil, "--json", "--allow-debug", "--at", "1665582606.081",
		filepath.Join(verifyTestdata, "evervault-3-beta-debug.cbor"))
	if code != 0 {
		t.Fatalf("exit %d: %v", code, err)
	}
	j = verifyJSON{}
	if err := json.Unmarshal([]byte(out), &j); err != nil || !j.Policy.OK {
		t.Errorf("policy %+v, %v", j.Policy, err)
	}
}
