package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/attest/verifier"
	"github.com/cloister/cloister/internal/sdnotify"
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
	store             string
	log               *logFlags

	maxChallengesPerClient int
	maxSessionsPerClient   int
	clientRate             float64
	clientBurst            int
	clientIPv4Prefix       int
	clientIPv6Prefix       int
	maxClients             int
	trustedProxies         []string
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
Their issuer (iss, and the OpenID discovery document's issuer and jwks_uri)
is --issuer, or http(s)://ADDR from --addr (this host's name for an
unspecified host such as 0.0.0.0); it never comes from a request's Host
header. Set --issuer to the URL relying parties use when that is a DNS name
or a proxy.

Challenges and Veraison sessions are open to any client, so each client
(source address; an IPv6 /64) may hold at most --max-challenges-per-client
challenges and --max-sessions-per-client sessions and create them at
--client-rate per second (--client-burst at once); beyond that it gets 429
with Retry-After while other clients are served. Behind a reverse proxy
every client has the proxy's address: name the proxy with --trusted-proxy
so that its X-Forwarded-For is believed (never from anyone else).

Several replicas act as one behind a load balancer with --store
postgres://...: challenges and Veraison sessions live in PostgreSQL, so a
challenge issued by one replica is consumed through any, exactly once, and
the per-client quotas count across replicas (the rates stay per replica).
A shared store needs --signing-key, the same file on every replica, so that
all of them sign with one key and publish one JWKS.

The server stops gracefully on SIGINT or SIGTERM.`,
		Example: `  cloister attest serve
  cloister attest serve --addr 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem --policy-file policies.yaml
  cloister attest serve --root aws --root dev-root.pem --allow-time-override
  cloister attest serve --addr 0.0.0.0:8443 --store postgres://verifier@db/verifier --signing-key /etc/cloister/ear.pem`,
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
	fl.StringVar(&f.issuer, "issuer", "", "token issuer URL, as relying parties reach this server (default: http(s)://ADDR from --addr; never the request's Host header)")
	fl.StringVar(&f.store, "store", "", "where challenges and sessions live: empty for this process's memory, or postgres://... shared by replicas (needs --signing-key)")
	fl.IntVar(&f.maxChallengesPerClient, "max-challenges-per-client", verifier.DefaultMaxChallengesPerClient, "challenges one client may hold at once (negative: no limit)")
	fl.IntVar(&f.maxSessionsPerClient, "max-sessions-per-client", verifier.DefaultMaxSessionsPerClient, "Veraison sessions one client may hold at once (negative: no limit)")
	fl.Float64Var(&f.clientRate, "client-rate", verifier.DefaultClientRate, "challenges and sessions one client may create per second, sustained (negative: no limit)")
	fl.IntVar(&f.clientBurst, "client-burst", verifier.DefaultClientBurst, "challenges and sessions one client may create at once")
	fl.IntVar(&f.clientIPv4Prefix, "client-ipv4-prefix", verifier.DefaultClientIPv4Prefix, "leading bits of an IPv4 source address that name a client")
	fl.IntVar(&f.clientIPv6Prefix, "client-ipv6-prefix", verifier.DefaultClientIPv6Prefix, "leading bits of an IPv6 source address that name a client")
	fl.IntVar(&f.maxClients, "max-clients", verifier.DefaultMaxClients, "clients tracked for the per-client limits")
	fl.StringArrayVar(&f.trustedProxies, "trusted-proxy", nil, "address or CIDR block of a reverse proxy whose X-Forwarded-For names the client; repeatable (default: none, the header is ignored)")
	f.log = addLogFlags(cmd, "text")
	return cmd
}

func runAttestServe(cmd *cobra.Command, f attestServeFlags) error {
	logger, err := f.log.logger(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return fmt.Errorf("--tls-cert and --tls-key go together")
	}
	cfg := verifier.Config{
		AllowTimeOverride:      f.allowTimeOverride,
		KeyRotation:            f.keyRotation,
		TokenTTL:               f.tokenTTL,
		ChallengeTTL:           f.challengeTTL,
		Issuer:                 f.issuer,
		Build:                  "cloister " + buildVersion(),
		Logger:                 logger,
		MaxChallengesPerClient: f.maxChallengesPerClient,
		MaxSessionsPerClient:   f.maxSessionsPerClient,
		ClientRate:             f.clientRate,
		ClientBurst:            f.clientBurst,
		ClientIPv4Prefix:       f.clientIPv4Prefix,
		ClientIPv6Prefix:       f.clientIPv6Prefix,
		MaxClients:             f.maxClients,
	}
	for _, p := range f.trustedProxies {
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			a, aerr := netip.ParseAddr(p)
			if aerr != nil {
				return fmt.Errorf("--trusted-proxy %q: want an IP address or a CIDR block such as 10.0.0.0/8", p)
			}
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		cfg.TrustedProxies = append(cfg.TrustedProxies, pfx)
	}
	if f.clientBurst < 1 {
		return fmt.Errorf("--client-burst %d: want at least 1", f.clientBurst)
	}
	if f.maxClients < 1 {
		return fmt.Errorf("--max-clients %d: want at least 1", f.maxClients)
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
	if f.store != "" {
		if !strings.HasPrefix(f.store, "postgres://") && !strings.HasPrefix(f.store, "postgresql://") {
			return fmt.Errorf("--store %q: want postgres://USER@HOST:PORT/DB (or empty for memory)", kmsRedactStore(f.store))
		}
		if f.signingKey == "" {
			return fmt.Errorf("--store needs --signing-key: every replica must sign with the same key so that they publish one JWKS")
		}
		base := cmd.Context()
		if base == nil {
			base = context.Background()
		}
		octx, cancel := context.WithTimeout(base, 30*time.Second)
		st, err := verifier.OpenPostgresStore(octx, f.store)
		cancel()
		if err != nil {
			return fail(err)
		}
		defer st.Close()
		cfg.Store = st
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
	issuer := strings.TrimSuffix(f.issuer, "/")
	if issuer == "" { // what Serve derives
		issuer = verifier.DefaultIssuer(ln.Addr(), tlsCfg != nil)
		if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil && ap.Addr().IsUnspecified() {
			cfg.Logger.Warn("issuer derived from an unspecified listen address; set --issuer to the URL relying parties use", "issuer", issuer)
		}
	}
	cfg.Logger.Info("attestation verifier listening", "url", scheme+"://"+ln.Addr().String(), "issuer", issuer,
		"allow_time_override", f.allowTimeOverride, "store", attestStoreName(f.store), "trusted_proxies", len(cfg.TrustedProxies))
	parent := cmd.Context()
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The listener is open: connections queue until Serve accepts them.
	notify(logger, sdnotify.Ready)
	stopping := notifyStopping(ctx, logger)
	err = srv.Serve(ctx, ln, tlsCfg)
	stopping()
	if err != nil {
		return fail(err)
	}
	return nil
}

// attestStoreName names the store for the log, without credentials.
func attestStoreName(spec string) string {
	if spec == "" {
		return "memory"
	}
	return kmsRedactStore(spec)
}
