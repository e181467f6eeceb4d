package main

import (
	"context"
	"encoding/json"
	"flag"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/parent"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files under testdata/json")

// checkGolden compares got with testdata/json/name byte for byte (or
// rewrites the file with -update).
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "json", name)
	if *updateGolden {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with go test -run %s -update)", err, t.Name())
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s: output differs from %s (-want +got):\n%s", name, path, d)
	}
}

// tricky is a string with what JSON encoders treat differently: HTML
// characters, a non-ASCII letter, a line separator and a quote.
const tricky = "a <b> & \"c\" ü \u2028"

// fakeDaemon serves canned answers on a Unix socket, as the daemon would.
func fakeDaemon(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	desc := parent.EnclaveDescription{
		EnclaveName: tricky, EnclaveID: "i-0-enc1", ProcessID: 42, EnclaveCID: 16, NumberOfCPUs: 1, CPUIDs: []int{1},
		MemoryMiB: 128, State: parent.StateRunning, Flags: "NONE", Backend: "sandbox", EIFPath: "/x/<app>.eif",
		StartTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	mux := http.NewServeMux()
	reply := func(v any) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		}
	}
	mux.HandleFunc("POST /v1/enclaves", reply(parent.RunResult{EnclaveName: tricky, EnclaveID: "i-0-enc1", ProcessID: 42, EnclaveCID: 16, NumberOfCPUs: 1, CPUIDs: []int{1}, MemoryMiB: 128}))
	mux.HandleFunc("GET /v1/enclaves", reply([]parent.EnclaveDescription{desc}))
	mux.HandleFunc("DELETE /v1/enclaves/{id}", reply(parent.TerminateResult{EnclaveName: tricky, EnclaveID: "i-0-enc1", Terminated: true}))
	mux.HandleFunc("DELETE /v1/enclaves", reply([]parent.TerminateResult{{EnclaveName: tricky, EnclaveID: "i-0-enc1", Terminated: true}}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return sock
}

// shortTempDir is a temporary directory short enough for a socket path.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// fakeKMS answers CreateKey and CloisterExplain with canned documents.
func fakeKMS(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		switch r.Header.Get("X-Amz-Target") {
		case "TrentService.CreateKey":
			_, _ = w.Write([]byte(`{"KeyMetadata":{"AWSAccountId":"111122223333","KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab",` +
				`"Arn":"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab","CreationDate":1700000000.5,` +
				`"Enabled":true,"Description":` + jsonString(tricky) + `,"KeyUsage":"ENCRYPT_DECRYPT","KeyState":"Enabled",` +
				`"Origin":"AWS_KMS","KeyManager":"CUSTOMER","KeySpec":"SYMMETRIC_DEFAULT","CustomerMasterKeySpec":"SYMMETRIC_DEFAULT",` +
				`"EncryptionAlgorithms":["SYMMETRIC_DEFAULT"],"MultiRegion":false}}`))
		case "TrentService.CloisterExplain":
			_, _ = w.Write([]byte(`{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Action":"kms:Decrypt",` +
				`"PrincipalArn":"arn:aws:iam::111122223333:user/admin","Explanation":{"decision":"Allow","reason":` + jsonString(tricky) +
				`,"statements":[{"index":0,"sid":"<Admin>","effect":"Allow","applies":true,"principal":{"matched":true},` +
				`"action":{"matched":true},"resource":{"matched":true}}]}}`))
		default:
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"__type":"UnknownOperationException","message":"unexpected"}`))
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return "http://" + l.Addr().String()
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestJSONOutputBytes pins the exact bytes every JSON-printing command
// writes (indentation, HTML escaping, key order, the final newline): the
// nitro-cli-compatible commands, the AWS-CLI-style key service commands
// and verify --json. The golden files were written by the printers before
// they were merged into one.
func TestJSONOutputBytes(t *testing.T) {
	dir := t.TempDir()
	sock := fakeDaemon(t)
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"run-enclave.json", []string{"run-enclave", "--socket", sock, "--eif-path", "/x/app.eif", "--memory", "128", "--cpu-count", "1"}},
		{"describe-enclaves.json", []string{"describe-enclaves", "--socket", sock}},
		{"terminate-enclave.json", []string{"terminate-enclave", "--socket", sock, "--enclave-id", "i-0-enc1"}},
		{"terminate-enclave-all.json", []string{"terminate-enclave", "--socket", sock, "--all"}},
		{"verify.json", []string{"verify", "--json", "--allow-debug", "--at", "2022-10-12T13:50:06.081Z", filepath.Join(verifyTestdata, "evervault-3-beta-debug.cbor")}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			out, code := runCLI(t, tc.args...)
			if code != 0 {
				t.Fatalf("cloister %s: exit %d:\n%s", strings.Join(tc.args, " "), code, out)
			}
			checkGolden(t, tc.golden, out)
		})
	}

	// The nitro-cli image commands: describe-eif (custom metadata with
	// HTML characters), build-enclave and pcr.
	t.Run("eif", func(t *testing.T) {
		t.Setenv("CLOISTER_BLOBS", filepath.Join(dir, "no-blobs"))
		t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
		rootfs := filepath.Join(dir, "rootfs")
		if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		for p, b := range map[string]string{"rootfs/bin/app": "app", "cloister-init": "fake init", "md.json": `{"owner":` + jsonString(tricky) + `}`} {
			if err := os.WriteFile(filepath.Join(dir, p), []byte(b), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		eifPath := filepath.Join(dir, "app.eif")
		out, code := runCLI(t, "build-enclave", "--rootfs", rootfs, "--output-file", eifPath, "--init", filepath.Join(dir, "cloister-init"),
			"--cmd", "/bin/app", "--name", "app<1>", "--version", "1.0&", "--metadata", filepath.Join(dir, "md.json"))
		if code != 0 {
			t.Fatalf("build-enclave: exit %d:\n%s", code, out)
		}
		checkGolden(t, "build-enclave.json", out)
		out, code = runCLI(t, "describe-eif", "--eif-path", eifPath)
		if code != 0 {
			t.Fatalf("describe-eif: exit %d:\n%s", code, out)
		}
		checkGolden(t, "describe-eif.json", out)
		input := filepath.Join(dir, "input")
		if err := os.WriteFile(input, []byte("<pcr input>"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, code = runCLI(t, "pcr", "--input", input)
		if code != 0 {
			t.Fatalf("pcr: exit %d:\n%s", code, out)
		}
		checkGolden(t, "pcr.json", out)
	})

	// The key service's commands: AWS-CLI style (4 spaces, nulls and
	// ResultMetadata dropped) and explain.
	t.Run("kms", func(t *testing.T) {
		emptyConfig := filepath.Join(dir, "aws-config")
		if err := os.WriteFile(emptyConfig, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
			"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_SHARED_CREDENTIALS_FILE"} {
			t.Setenv(v, "")
		}
		t.Setenv("AWS_CONFIG_FILE", emptyConfig)
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
		creds := filepath.Join(dir, "creds")
		if err := os.WriteFile(creds, []byte("[admin]\naws_access_key_id = AKIDADMIN\naws_secret_access_key = s1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		client := []string{"--endpoint", fakeKMS(t), "--credentials", creds, "--profile", "admin"}
		out, stderr, code := runKMSCLI(t, context.Background(), nil, append([]string{"kms", "create-key"}, client...)...)
		if code != 0 {
			t.Fatalf("kms create-key: exit %d: %s", code, stderr)
		}
		checkGolden(t, "kms-create-key.json", out)
		policyFile := filepath.Join(dir, "policy.json")
		if err := os.WriteFile(policyFile, []byte(`{"Statement":[]}`), 0o600); err != nil {
			t.Fatal(err)
		}
		out, stderr, code = runKMSCLI(t, context.Background(), nil, append([]string{"kms", "explain", "--action", "Decrypt", "--policy", policyFile}, client...)...)
		if code != 0 {
			t.Fatalf("kms explain: exit %d: %s", code, stderr)
		}
		checkGolden(t, "kms-explain.json", out)
	})
}
