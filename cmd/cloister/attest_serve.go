package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/attest/verifier"
)

func init() { register(newAttestCmd) }

// newAttestCmd is the parent of the attestation service commands.
func newAttestCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "attest",
		Short: "Attestation services",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newAttestServeCmd())
	return cmd
}

type attestServeFlags struct {
	addr              string
	policyFile        string
	roots             []string
	signingKey        string
	tlsCert, tlsKey   string
	allowTimeOverride bool
	keyRotation       time.Duration
	tokenTTL          time.Duration
	challengeTTL      time.Duration
	issuer            string
	logFormat         string
}

func newAttestServeCmd() *cobra.Command {
	var f attestServeFlags
	cmd := &cobra.Command{
		Use:   "serve [flags]",
		Short: "Serve the attestation verification endpoint (EAR tokens)",
		Long: `serve runs an HTTP(S) attestation verifier for AWS Nitro Enclaves documents.

POST /v1/verify takes a document (raw CBOR, hex, base64, or a JSON envelope
with a policy) and answers with the verified claims, every policy check, a
verdict (affirming, warning, contraindicated) and an EAR token (JWT, keys at
/.well-known/jwks.json). POST /v1/challenges issues single-use nonces;
Veraison's challenge-response API is under /challenge-response/v1. The page
at / verifies a pasted or uploaded document. The API is described at
/openapi.yaml; /healthz, /readyz and /metrics serve operators.

Policies come from --policy-file (YAML or JSON: "default: NAME" and
"policies: {NAME: {pcrs, allow_debug, max_age, challenge, nonce, user_data,
public_key, roots}}"); without it every non-debug document that verifies is
accepted. The file is validated at start.

Tokens are signed with --signing-key (EC P-256 → ES256 or P-384 → ES384 PEM,
never rotated) or with a generated P-256 key replaced every --key-rotation.

The server stops gracefully on SIGINT or SIGTERM.`,
		Example: `  cloister attest serve
  cloister attest serve --addr 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem --policy-file policies.yaml
  cloister attest serve --root aws --root dev-root.pem --allow-time-override`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAttestServe(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", "127.0.0.1:8443", "listen address HOST:PORT")
	fl.StringVar(&f.policyFile, "policy-file", "", "named policies (YAML or JSON)")
	fl.StringArrayVar(&f.roots, "root", nil, `trusted root: "aws" (the embedded AWS Nitro root, the default) or a PEM file; repeatable`)
	fl.StringVar(&f.signingKey, "signing-key", "", "token signing key (EC P-256 or P-384 private key, PEM); default: generated and rotated")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "serve HTTPS with this certificate chain (PEM); needs --tls-key")
	fl.StringVar(&f.tlsKey, "tls-key", "", "private key of --tls-cert (PEM)")
	fl.BoolVar(&f.allowTimeOverride, "allow-time-override", false, "let requests choose the verification time (testing, forensics)")
	fl.DurationVar(&f.keyRotation, "key-rotation", verifier.DefaultKeyRotation, "lifetime of a generated signing key (negative: never rotate)")
	fl.DurationVar(&f.tokenTTL, "token-ttl", verifier.DefaultTokenTTL, "lifetime of issued tokens (exp - iat)")
	fl.DurationVar(&f.challengeTTL, "challenge-ttl", verifier.DefaultChallengeTTL, "lifetime of nonces from POST /v1/challenges")
	fl.StringVar(&f.issuer, "issuer", "", "token issuer URL (default: scheme and Host of each request)")
	fl.StringVar(&f.logFormat, "log-format", "text", "access log format on stderr: text or json")
	return cmd
}

func runAttestServe(cmd *cobra.Command, f attestServeFlags) error {
	var h slog.Handler
	switch f.logFormat {
	case "text":
		h = slog.NewTextHandler(cmd.ErrOrStderr(), nil)
	case "json":
		h = slog.NewJSONHandler(cmd.ErrOrStderr(), nil)
	default:
		return fmt.Errorf("--log-format %q: want text or json", f.logFormat)
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return fmt.Errorf("--tls-cert and --tls-key go together")
	}
	cfg := verifier.Config{
		AllowTimeOverride: f.allowTimeOverride,
		KeyRotation:       f.keyRotation,
		TokenTTL:          f.tokenTTL,
		ChallengeTTL:      f.challengeTTL,
		Issuer:            f.issuer,
		Build:             "cloister " + attestServeVersion(),
		Logger:            slog.New(h),
	}
	fail := func(err error) error { return withExit(1, fmt.Errorf("attest serve: %w", err)) }

	includeAWS := len(f.roots) == 0
	for _, spec := range f.roots {
		certs, aws, err := attest.LoadRoots([]string{spec})
		if err != nil {
			return fail(fmt.Errorf("%w (give --root aws or a readable PEM file)", err))
		}
		includeAWS = includeAWS || aws
		for _, c := range certs {
			cfg.Roots = append(cfg.Roots, verifier.Root{Name: spec, Cert: c})
		}
	}
	cfg.NoAWSRoot = !includeAWS
	if f.policyFile != "" {
		b, err := os.ReadFile(f.policyFile)
		if err != nil {
			return fail(err)
		}
		if cfg.Policies, err = verifier.ParsePolicyFile(b); err != nil {
			return fail(fmt.Errorf("%s: %w", f.policyFile, err))
		}
	}
	if f.signingKey != "" {
		b, err := os.ReadFile(f.signingKey)
		if err != nil {
			return fail(err)
		}
		if cfg.SigningKey, err = verifier.LoadSigningKeyPEM(b); err != nil {
			return fail(fmt.Errorf("%s: %w", f.signingKey, err))
		}
	}
	var tlsCfg *tls.Config
	if f.tlsCert != "" {
		pair, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return fail(fmt.Errorf("TLS certificate: %w", err))
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	srv, err := verifier.New(cfg)
	if err != nil {
		return fail(err)
	}
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fail(err)
	}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	cfg.Logger.Info("attestation verifier listening", "url", scheme+"://"+ln.Addr().String(), "allow_time_override", f.allowTimeOverride)
	parent := cmd.Context()
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := srv.Serve(ctx, ln, tlsCfg); err != nil {
		return fail(err)
	}
	return nil
}

// attestServeVersion is the module version this binary was built from.
func attestServeVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
