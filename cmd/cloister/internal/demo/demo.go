// Package demo is the main job of README.md: in one command it shows the
// whole mission on this machine. It builds the kms-secret example's
// enclave image, starts the parent daemon, the key service (embedded
// store) and the attestation verifier in-process, creates a key whose
// policy pins the image's PCR0, seals a secret, runs the enclave, and
// narrates what happens: the measurements, the enclave's attestation
// verified, the key released to the enclave, the parent — holding the same
// credentials but no attestation — refused. Everything is cleaned up
// afterwards, and any step that does not go as described fails the demo.
package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/attest/verifier"
	"github.com/cloister/cloister/enclave/build"
	"github.com/cloister/cloister/examples/kms-secret/secret"
	"github.com/cloister/cloister/internal/kmod"
	"github.com/cloister/cloister/kms"
	"github.com/cloister/cloister/kms/sigv4"
	"github.com/cloister/cloister/kms/store"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/daemon"
)

// Config is what the demo needs. The zero value is not usable: Init, App
// and NewBackend are required.
type Config struct {
	// Backend is "sandbox" (default) or "qemu".
	Backend string
	// Init is the static cloister-init binary.
	Init string
	// App is the kms-secret example's enclave program (static).
	App string
	// Kernel and ModulesDir are the microVM's kernel and its
	// /lib/modules/<version> directory (qemu backend only).
	Kernel, ModulesDir string
	// KernelNote, when set, is said with the kernel: why it was chosen.
	KernelNote string
	// NewBackend creates the daemon's backend (the cloister command's).
	NewBackend func(daemon.Config) (backend.Backend, error)
	// MonitorBinary is the daemon's monitor executable (cloister-monitor,
	// see daemon.FindMonitorBinary); "" runs monitors as this executable.
	MonitorBinary string
	// Out receives the narration.
	Out io.Writer
	// Keep leaves the working directory in place for inspection.
	Keep bool
}

// The demo's principals: the admin seals secrets, the enclave's
// credentials only open them with a valid attestation.
const (
	adminARN   = "arn:aws:iam::111122223333:user/admin"
	enclaveARN = "arn:aws:iam::111122223333:role/enclave"
	region     = "us-east-1"
	theSecret  = "the launch code is 0000"
)

type narrator struct {
	w    io.Writer
	step int
}

func (n *narrator) stepf(format string, args ...any) {
	n.step++
	fmt.Fprintf(n.w, "\n[%d] %s\n", n.step, fmt.Sprintf(format, args...))
}

func (n *narrator) okf(format string, args ...any) {
	fmt.Fprintf(n.w, "    ✓ %s\n", fmt.Sprintf(format, args...))
}

func (n *narrator) infof(format string, args ...any) {
	fmt.Fprintf(n.w, "      %s\n", fmt.Sprintf(format, args...))
}

// Run performs the demo. It returns an error naming the step that failed.
func Run(ctx context.Context, cfg Config) (err error) {
	if cfg.Backend == "" {
		cfg.Backend = "sandbox"
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	n := &narrator{w: cfg.Out}
	ws, err := os.MkdirTemp("", "cloister-demo-")
	if err != nil {
		return err
	}
	defer func() {
		if cfg.Keep {
			fmt.Fprintf(cfg.Out, "\nworking directory kept: %s\n", ws)
			return
		}
		_ = os.RemoveAll(ws)
	}()
	logs, err := os.Create(filepath.Join(ws, "services.log"))
	if err != nil {
		return err
	}
	defer logs.Close()
	logger := slog.New(slog.NewTextHandler(logs, nil))
	defer func() {
		if err != nil {
			fmt.Fprintf(cfg.Out, "\n✗ the demo failed: %v\n  service logs: %s\n", err, logs.Name())
			cfg.Keep = true
		}
	}()

	// 1. The image.
	n.stepf("Building the enclave image from the kms-secret example (%s backend)", cfg.Backend)
	img, m, err := buildImage(ctx, ws, cfg)
	if err != nil {
		return fmt.Errorf("build the enclave image: %w", err)
	}
	n.okf("%s, reproducible, measured like nitro-cli:", filepath.Base(img))
	n.infof("PCR0 %s", m.PCR0)
	n.infof("PCR1 %s", m.PCR1)
	n.infof("PCR2 %s", m.PCR2)
	if cfg.Backend == "qemu" {
		n.infof("kernel %s", cfg.Kernel)
		if cfg.KernelNote != "" {
			n.infof("(%s)", cfg.KernelNote)
		}
	}

	// 2. The daemon.
	n.stepf("Starting the parent daemon (%s backend)", cfg.Backend)
	allow := filepath.Join(ws, "egress-allowlist.yaml")
	if err := os.WriteFile(allow, []byte("allowlist: []\n"), 0o644); err != nil {
		return err
	}
	dcfg := daemon.Config{Backend: cfg.Backend, StateDir: filepath.Join(ws, "state"), Socket: filepath.Join(ws, "d.sock"),
		MemoryMiB: 1024, HeartbeatTimeout: 3 * time.Minute, Egress: daemon.EgressConfig{Allowlist: allow}}
	be, err := cfg.NewBackend(dcfg)
	if err != nil {
		return fmt.Errorf("daemon backend: %w", err)
	}
	dctx, stopDaemon := context.WithCancel(ctx)
	d, err := daemon.New(dctx, dcfg, daemon.Options{Backend: be, Logger: logger.With("service", "daemon"), MonitorBinary: cfg.MonitorBinary})
	if err != nil {
		stopDaemon()
		return fmt.Errorf("start the daemon: %w", err)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(dctx) }()
	defer func() {
		tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = d.TerminateAll(tctx)
		stopDaemon()
		<-served
		d.Close()
	}()
	root, err := parseCert(d.DevRootPEM())
	if err != nil {
		return fmt.Errorf("daemon development root: %w", err)
	}
	n.okf("daemon up; enclaves' attestation documents are signed by its development root")
	n.infof("%s (expires %s)", root.Subject.CommonName, root.NotAfter.Format("2006-01-02"))

	// 3. The key service and the verifier.
	n.stepf("Starting the key service (embedded store) and the attestation verifier")
	kmsURL, adminKMS, enclaveKMS, stopKMS, err := startKMS(ctx, ws, root, logger)
	if err != nil {
		return fmt.Errorf("start the key service: %w", err)
	}
	defer stopKMS()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(kmsURL, "http://"))
	if err := os.WriteFile(allow, []byte(fmt.Sprintf("allowlist:\n- {address: %s, port: %s}\n", host, port)), 0o644); err != nil {
		return err
	}
	verifyURL, stopVerifier, err := startVerifier(root, logger)
	if err != nil {
		return fmt.Errorf("start the verifier: %w", err)
	}
	defer stopVerifier()
	n.okf("key service at %s (AWS KMS JSON 1.1 protocol, SigV4), trusting the daemon's development root", kmsURL)
	n.okf("verifier at %s", verifyURL)
	n.infof("the daemon's egress proxy lets enclaves reach only %s:%s", host, port)

	// 4. The key and the secret.
	n.stepf("Creating a key whose policy releases it only to PCR0 %s…, and sealing a secret", m.PCR0[:16])
	keyID, err := secret.CreateKey(ctx, adminKMS, secret.KeyPolicy{Admin: adminARN, Enclave: enclaveARN, PCR0: m.PCR0})
	if err != nil {
		return fmt.Errorf("create the key: %w", err)
	}
	blob, err := secret.Seal(ctx, adminKMS, keyID, []byte(theSecret))
	if err != nil {
		return fmt.Errorf("seal the secret: %w", err)
	}
	n.okf("key %s; the sealed secret is %d bytes of ciphertext", keyID, len(blob))

	// 5. The enclave.
	n.stepf("Running the enclave")
	res, err := d.Run(ctx, parent.RunRequest{EIFPath: img, MemoryMiB: memoryFor(cfg.Backend), CPUCount: 1})
	if err != nil {
		return fmt.Errorf("run the enclave: %w", err)
	}
	n.okf("%s is running: CID %d, CPU %v, %d MiB; its boot heartbeat arrived", res.EnclaveID, res.EnclaveCID, res.CPUIDs, res.MemoryMiB)

	// 6. Key release.
	n.stepf("Asking the enclave to open the secret: it attests itself to the key service")
	conn, err := d.Dial(ctx, res.EnclaveID, secret.Port)
	if err != nil {
		return fmt.Errorf("connect to the enclave: %w", err)
	}
	uctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	got, doc, err := secret.UnsealAttested(uctx, conn, secret.Request{Endpoint: kmsURL, Region: region,
		AccessKeyID: enclaveCreds.id, SecretAccessKey: enclaveCreds.secret, Ciphertext: blob, KeyID: keyID})
	cancel()
	conn.Close()
	if err != nil {
		return fmt.Errorf("the enclave could not open the secret: %w%s", err, consoleTail(ctx, d, res.EnclaveID))
	}
	if string(got) != theSecret {
		return fmt.Errorf("the enclave returned %q, not the sealed secret", got)
	}
	n.okf("the key service verified the enclave's attestation and released the key, enveloped to the enclave's own key")
	n.okf("the enclave opened the secret: %q", got)

	// 7. The attestation, verified independently.
	n.stepf("Checking the attestation document the enclave presented with the verifier")
	verdict, err := verifyDoc(ctx, verifyURL, doc, m.PCR0)
	if err != nil {
		return fmt.Errorf("verify the enclave's attestation document: %w", err)
	}
	for _, line := range verdict {
		n.okf("%s", line)
	}

	// 8. The parent is refused.
	n.stepf("The parent tries to open the secret itself, with the enclave's credentials but no attestation")
	_, err = enclaveKMS.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: blob, KeyId: aws.String(keyID)})
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "AccessDeniedException" {
		return fmt.Errorf("the parent was not refused (error %v)", err)
	}
	n.okf("refused: %s: %s", apiErr.ErrorCode(), apiErr.ErrorMessage())

	// 9. Done.
	n.stepf("Cleaning up: terminating the enclave, stopping the services")
	if _, err := d.Terminate(ctx, res.EnclaveID); err != nil {
		return fmt.Errorf("terminate the enclave: %w", err)
	}
	n.okf("done: the secret was released to the measured enclave and to nothing else")
	return nil
}

func memoryFor(backendName string) int {
	if backendName == "qemu" {
		return 384
	}
	return 256
}

// buildImage builds the kms-secret enclave image into ws.
func buildImage(ctx context.Context, ws string, cfg Config) (string, parent.Measurements, error) {
	rootfs := filepath.Join(ws, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		return "", parent.Measurements{}, err
	}
	app, err := os.ReadFile(cfg.App)
	if err != nil {
		return "", parent.Measurements{}, err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "kms-secret-enclave"), app, 0o755); err != nil {
		return "", parent.Measurements{}, err
	}
	opts := build.Options{InitPath: cfg.Init, Cmd: []string{"/bin/kms-secret-enclave"}, Name: "kms-secret", Version: "demo"}
	if cfg.Backend == "qemu" {
		if cfg.Kernel == "" || cfg.ModulesDir == "" {
			return "", parent.Measurements{}, errors.New("the qemu backend needs a kernel and its modules directory: apt-get install linux-image-cloud-amd64, or pass --kernel and --kernel-modules-dir")
		}
		mods, err := kmod.MicroVMModules(cfg.ModulesDir)
		if err != nil {
			return "", parent.Measurements{}, err
		}
		opts.Kernel, opts.KernelModules = cfg.Kernel, mods
	}
	epoch := time.Unix(1700000000, 0).UTC()
	opts.SourceDateEpoch = &epoch
	out := filepath.Join(ws, "kms-secret.eif")
	res, err := build.BuildFile(ctx, build.FromRootFS(rootfs), out, opts)
	if err != nil {
		return "", parent.Measurements{}, err
	}
	return out, parent.Measurements{
		HashAlgorithm: parent.HashAlgorithm,
		PCR0:          hex.EncodeToString(res.Measurements.PCR0[:]),
		PCR1:          hex.EncodeToString(res.Measurements.PCR1[:]),
		PCR2:          hex.EncodeToString(res.Measurements.PCR2[:]),
	}, nil
}

type creds struct{ id, secret string }

var (
	adminCreds   creds
	enclaveCreds creds
)

func randomCreds(prefix string) creds {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return creds{id: prefix + strings.ToUpper(hex.EncodeToString(b[:6])), secret: hex.EncodeToString(b)}
}

// startKMS starts the key service on loopback with an embedded store and
// two principals, trusting the daemon's development root.
func startKMS(ctx context.Context, ws string, root *x509.Certificate, logger *slog.Logger) (string, *awskms.Client, *awskms.Client, func(), error) {
	adminCreds, enclaveCreds = randomCreds("AKIADEMOADMIN"), randomCreds("AKIADEMOENCL")
	credsFile := fmt.Sprintf("[admin]\naws_access_key_id = %s\naws_secret_access_key = %s\nprincipal_arn = %s\n\n[enclave]\naws_access_key_id = %s\naws_secret_access_key = %s\nprincipal_arn = %s\n",
		adminCreds.id, adminCreds.secret, adminARN, enclaveCreds.id, enclaveCreds.secret, enclaveARN)
	cs, err := sigv4.ParseCredentials(strings.NewReader(credsFile))
	if err != nil {
		return "", nil, nil, nil, err
	}
	rootKey := make([]byte, 32)
	if _, err := rand.Read(rootKey); err != nil {
		return "", nil, nil, nil, err
	}
	st, err := store.OpenBolt(filepath.Join(ws, "kms.db"), rootKey)
	if err != nil {
		return "", nil, nil, nil, err
	}
	av, err := attest.NewVerifier(attest.VerifierConfig{Roots: []*x509.Certificate{root}})
	if err != nil {
		st.Close()
		return "", nil, nil, nil, err
	}
	srv, err := kms.NewServer(kms.Config{Store: st, Credentials: cs, Region: region, Attestation: av, Logger: logger.With("service", "kms")})
	if err != nil {
		st.Close()
		return "", nil, nil, nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		st.Close()
		return "", nil, nil, nil, err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(l)
	url := "http://" + l.Addr().String()
	client := func(c creds) *awskms.Client {
		return awskms.New(awskms.Options{Region: region, BaseEndpoint: aws.String(url),
			Credentials: credentials.NewStaticCredentialsProvider(c.id, c.secret, ""), RetryMaxAttempts: 1})
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		st.Close()
	}
	return url, client(adminCreds), client(enclaveCreds), stop, nil
}

// startVerifier starts the attestation verification endpoint on loopback.
func startVerifier(root *x509.Certificate, logger *slog.Logger) (string, func(), error) {
	v, err := verifier.New(verifier.Config{Roots: []verifier.Root{{Name: "cloister-dev", Cert: root}}, Logger: logger.With("service", "verifier")})
	if err != nil {
		return "", nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	hs := &http.Server{Handler: v, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(l)
	return "http://" + l.Addr().String(), func() { hs.Close() }, nil
}

// verifyDoc posts doc to the verifier with a policy pinning PCR0 and
// returns lines describing the verdict.
func verifyDoc(ctx context.Context, url string, doc []byte, pcr0 string) ([]string, error) {
	body, _ := json.Marshal(map[string]any{
		"evidence": doc,
		"policy":   map[string]any{"pcrs": map[string]string{"0": pcr0}},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/verify", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("verifier answered %s: %s", resp.Status, b)
	}
	var out struct {
		Verdict string `json:"verdict"`
		Claims  struct {
			ModuleID  string            `json:"module_id"`
			Timestamp string            `json:"timestamp"`
			PCRs      map[string]string `json:"pcrs"`
			PublicKey *string           `json:"public_key"`
		} `json:"claims"`
		Checks []struct {
			Name string `json:"name"`
			OK   bool   `json:"ok"`
		} `json:"checks"`
		Token string `json:"token"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("verifier response: %w", err)
	}
	// Every check must pass. A document under a development root is at
	// best "warning": its hardware claim is the emulator's, not Nitro's.
	var passed []string
	for _, c := range out.Checks {
		if !c.OK {
			return nil, fmt.Errorf("check %s failed: %s", c.Name, b)
		}
		passed = append(passed, c.Name)
	}
	if out.Verdict != "warning" && out.Verdict != "affirming" {
		return nil, fmt.Errorf("verdict %q: %s", out.Verdict, b)
	}
	lines := []string{
		fmt.Sprintf("checks passed: %s", strings.Join(passed, ", ")),
		fmt.Sprintf("verdict %q: everything checks out, and the verifier notes the signer is a development root, not AWS Nitro hardware", out.Verdict),
		fmt.Sprintf("module %s, issued %s, PCR0 %s…", out.Claims.ModuleID, out.Claims.Timestamp, out.Claims.PCRs["0"][:16]),
	}
	if out.Claims.PublicKey != nil {
		lines = append(lines, fmt.Sprintf("it carries the enclave's RSA public key (%d bytes) the key was enveloped to", len(*out.Claims.PublicKey)/2))
	}
	lines = append(lines, fmt.Sprintf("EAR attestation-result token issued (%d bytes, verifiable with the verifier's JWKS)", len(out.Token)))
	return lines, nil
}

func parseCert(pemBytes []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// consoleTail returns the end of the enclave's console for error messages.
func consoleTail(ctx context.Context, d *daemon.Daemon, id string) string {
	desc, err := d.DescribeOne(id)
	if err != nil || desc.ConsoleLog == "" {
		return ""
	}
	b, err := os.ReadFile(desc.ConsoleLog)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n--- enclave console ---\n" + string(b)
}
