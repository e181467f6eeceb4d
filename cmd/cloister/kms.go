package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/spf13/cobra"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/sdnotify"
	"github.com/cloister/cloister/kms"
	"github.com/cloister/cloister/kms/sigv4"
	"github.com/cloister/cloister/kms/store"
)

func init() { register(newKMSCmd) }

// defaultKMSAddr is where `cloister kms serve` listens and the client
// subcommands connect by default.
const defaultKMSAddr = "127.0.0.1:7777"

func newKMSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kms",
		Short: "Run and use the attestation-gated, AWS-KMS-compatible key service",
		Long: `kms serves Cloister's key service (the AWS KMS JSON protocol with SigV4, so the
AWS SDKs and CLI work against it, plus Nitro Enclave attestation on Decrypt,
GenerateDataKey and GenerateRandom), and offers small client commands for
scripts.`,
	}
	cmd.AddCommand(newKMSServeCmd(), newKMSCreateKeyCmd(), newKMSEncryptCmd(), newKMSDecryptCmd(), newKMSExplainCmd())
	return cmd
}

// kmsStateDir is $XDG_STATE_HOME/cloister or ~/.local/state/cloister.
func kmsStateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "cloister"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a state directory: set XDG_STATE_HOME or HOME: %w", err)
	}
	return filepath.Join(home, ".local", "state", "cloister"), nil
}

type kmsServeFlags struct {
	addr, storeSpec, credentials, rootKey, region, tlsCert, tlsKey string
	roots                                                          []string
	maxAge                                                         time.Duration
	log                                                            *logFlags
}

func newKMSServeCmd() *cobra.Command {
	var f kmsServeFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the key service",
		Long: `serve runs the key service until interrupted.

Defaults: listen on ` + defaultKMSAddr + ` (loopback only; a non-loopback
address requires --tls-cert/--tls-key), store bbolt:$XDG_STATE_HOME/cloister/kms.db
(or ~/.local/state/cloister/kms.db). Key material is sealed under a 32-byte
root key: --root-key FILE, else $CLOISTER_KMS_ROOT_KEY, else the file
kms-root.key in the state directory, created (mode 0600) on first use.

--credentials is an AWS shared-credentials file; each profile's
aws_access_key_id/aws_secret_access_key may call the service as
principal_arn (a Cloister extension), default arn:aws:iam::<aws_account_id or
111122223333>:user/<profile>.

Recipient attestation documents are verified against --root (default the
AWS Nitro root; give a PEM file for a development root, repeatable) and must
be at most --max-age old. One audit line per decision goes to stderr, as JSON
or, with --log-format text, as key=value text.

Several servers may share one PostgreSQL store (same --store and root key):
they behave as one service. GET /metrics serves Prometheus metrics and GET
/healthz answers 200 while the store is reachable, both without
authentication.

Under systemd (Type=notify) it reports READY=1 once it listens and
STOPPING=1 when it stops.`,
		Example: `  cloister kms serve --credentials kms-creds.ini
  cloister kms serve --store postgres://kms@127.0.0.1/kms --root aws --root dev-root.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runKMSServe(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", defaultKMSAddr, "listen address")
	fl.StringVar(&f.storeSpec, "store", "", "bbolt:PATH or postgres://... (default bbolt in the state directory)")
	fl.StringVar(&f.credentials, "credentials", "", "AWS shared-credentials file of accepted access keys (required)")
	fl.StringVar(&f.rootKey, "root-key", "", "file holding the 32-byte root key (raw, hex or base64)")
	fl.StringArrayVar(&f.roots, "root", nil, `trusted attestation root: "aws" or a PEM file; repeatable (default aws)`)
	fl.DurationVar(&f.maxAge, "max-age", kms.DefaultMaxAttestationAge, "oldest acceptable Recipient attestation document")
	fl.StringVar(&f.region, "region", kms.DefaultRegion, "region used in key ARNs")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate (PEM)")
	fl.StringVar(&f.tlsKey, "tls-key", "", "TLS private key (PEM)")
	f.log = addLogFlags(cmd, "json")
	return cmd
}

func runKMSServe(cmd *cobra.Command, f kmsServeFlags) error {
	log, err := f.log.logger(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	if f.credentials == "" {
		return errors.New("--credentials is required: an AWS shared-credentials file listing the access keys the service accepts")
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return errors.New("give both --tls-cert and --tls-key, or neither")
	}
	host, _, err := net.SplitHostPort(f.addr)
	if err != nil {
		return fmt.Errorf("--addr %q: %w", f.addr, err)
	}
	if ip := net.ParseIP(host); f.tlsCert == "" && (ip == nil || !ip.IsLoopback()) && host != "localhost" {
		return fmt.Errorf("--addr %s is not a loopback address: serving beyond this host requires --tls-cert and --tls-key", f.addr)
	}
	creds, err := sigv4.LoadCredentialsFile(f.credentials)
	if err != nil {
		return withExit(1, err)
	}
	roots, includeAWS, err := attest.LoadRoots(f.roots)
	if err != nil {
		return withExit(1, err)
	}
	av, err := attest.NewVerifier(attest.VerifierConfig{Roots: roots, NoAWSRoot: !includeAWS})
	if err != nil {
		return withExit(1, err)
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	spec, rootKey := f.storeSpec, []byte(nil)
	if spec == "" || f.rootKey == "" {
		dir, err := kmsStateDir()
		if err != nil {
			return withExit(1, err)
		}
		if spec == "" {
			spec = "bbolt:" + filepath.Join(dir, "kms.db")
		}
		if f.rootKey == "" && os.Getenv(store.RootKeyEnv) == "" {
			f.rootKey = filepath.Join(dir, "kms-root.key")
			if _, err := os.Stat(f.rootKey); errors.Is(err, os.ErrNotExist) {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					return withExit(1, err)
				}
				if err := store.CreateRootKeyFile(f.rootKey); err != nil {
					return withExit(1, err)
				}
				log.Warn("created a new root key; back it up: without it the stored keys are lost", "path", f.rootKey)
			}
		}
	}
	if rootKey, err = store.LoadRootKey(f.rootKey); err != nil {
		return withExit(1, err)
	}
	st, err := store.Open(ctx, spec, rootKey)
	if err != nil {
		return withExit(1, err)
	}
	defer st.Close()
	srv, err := kms.NewServer(kms.Config{Store: st, Credentials: creds, Region: f.region, Attestation: av, MaxAttestationAge: f.maxAge, Logger: log})
	if err != nil {
		return withExit(1, err)
	}
	l, err := net.Listen("tcp", f.addr)
	if err != nil {
		return withExit(1, err)
	}
	scheme := "http"
	if f.tlsCert != "" {
		scheme = "https"
	}
	log.Info("kms serving", "endpoint", scheme+"://"+l.Addr().String(), "store", kmsRedactStore(spec), "credentials", creds.Len())
	fmt.Fprintf(cmd.OutOrStdout(), "%s://%s\n", scheme, l.Addr())
	notify(log, sdnotify.Ready)
	stopping := notifyStopping(ctx, log)
	err = srv.Serve(ctx, l, kms.ServeOptions{TLSCert: f.tlsCert, TLSKey: f.tlsKey})
	stopping()
	if err != nil {
		return withExit(1, err)
	}
	return nil
}

// kmsRedactStore hides a password in a postgres:// store URL.
func kmsRedactStore(spec string) string {
	if u, err := url.Parse(spec); err == nil && u.User != nil {
		return u.Redacted()
	}
	return spec
}

// kmsClientFlags are shared by the client subcommands. Credentials,
// region and endpoint load as every AWS SDK loads them
// (config.LoadDefaultConfig: the environment, then the shared config and
// credentials files and their profiles); the flags override.
type kmsClientFlags struct {
	endpoint, credentials, profile, region string
}

func (f *kmsClientFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.endpoint, "endpoint", "", "key service URL (default: $AWS_ENDPOINT_URL_KMS, $AWS_ENDPOINT_URL or the profile's endpoint_url, else http://"+defaultKMSAddr+")")
	fl.StringVar(&f.credentials, "credentials", "", "AWS shared-credentials file (default $AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials)")
	fl.StringVar(&f.profile, "profile", "", "profile (default $AWS_PROFILE or default)")
	fl.StringVar(&f.region, "region", "", "signing region (default $AWS_REGION, $AWS_DEFAULT_REGION or the profile's, else "+kms.DefaultRegion+")")
}

// config loads the AWS configuration the standard way, with the flags on
// top.
func (f *kmsClientFlags) config(ctx context.Context) (aws.Config, error) {
	var opts []func(*config.LoadOptions) error
	if f.profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(f.profile))
	}
	if f.credentials != "" {
		opts = append(opts, config.WithSharedCredentialsFiles([]string{f.credentials}))
	}
	if f.region != "" {
		opts = append(opts, config.WithRegion(f.region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = kms.DefaultRegion
	}
	return cfg, nil
}

// client builds the SDK client and returns the endpoint it uses.
func (f *kmsClientFlags) client(ctx context.Context) (*awskms.Client, aws.Config, error) {
	cfg, err := f.config(ctx)
	if err != nil {
		return nil, aws.Config{}, err
	}
	c := awskms.NewFromConfig(cfg, func(o *awskms.Options) {
		o.RetryMaxAttempts = 1
		switch {
		case f.endpoint != "":
			o.BaseEndpoint = aws.String(f.endpoint)
		case o.BaseEndpoint == nil:
			o.BaseEndpoint = aws.String("http://" + defaultKMSAddr)
		}
	})
	return c, cfg, nil
}

// kmsParseContext turns repeated k=v flags into an encryption context.
func kmsParseContext(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--context %q: want KEY=VALUE", p)
		}
		m[k] = v
	}
	return m, nil
}

func kmsReadInput(cmd *cobra.Command, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("input exceeds %d bytes", limit)
	}
	return b, nil
}

// kmsPrintOutput prints an SDK operation output as the AWS CLI does: its
// members as JSON (blobs in base64, timestamps in ISO 8601), absent
// members and the SDK's ResultMetadata left out, indented by 4.
func kmsPrintOutput(cmd *cobra.Command, out any) error {
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	delete(m, "ResultMetadata")
	return printJSON(cmd.OutOrStdout(), dropNulls(m), awsCLIJSON)
}

func dropNulls(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if e == nil {
				delete(x, k)
				continue
			}
			x[k] = dropNulls(e)
		}
	case []any:
		for i, e := range x {
			x[i] = dropNulls(e)
		}
	}
	return v
}

func newKMSCreateKeyCmd() *cobra.Command {
	var cf kmsClientFlags
	var desc, policyFile, keySpec, keyUsage string
	cmd := &cobra.Command{
		Use:   "create-key",
		Short: "Create a key and print its metadata (JSON, as aws kms create-key)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, _, err := cf.client(cmd.Context())
			if err != nil {
				return withExit(1, err)
			}
			in := &awskms.CreateKeyInput{Description: aws.String(desc)}
			if keySpec != "" {
				in.KeySpec = types.KeySpec(keySpec)
			}
			if keyUsage != "" {
				in.KeyUsage = types.KeyUsageType(keyUsage)
			}
			if policyFile != "" {
				p, err := os.ReadFile(policyFile)
				if err != nil {
					return withExit(1, err)
				}
				in.Policy = aws.String(string(p))
			}
			out, err := c.CreateKey(cmd.Context(), in)
			if err != nil {
				return withExit(1, err)
			}
			return kmsPrintOutput(cmd, out)
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVar(&desc, "description", "", "key description")
	cmd.Flags().StringVar(&keySpec, "key-spec", "", "key spec, e.g. ECC_NIST_P256, RSA_2048, HMAC_256 (default SYMMETRIC_DEFAULT)")
	cmd.Flags().StringVar(&keyUsage, "key-usage", "", "key usage, e.g. SIGN_VERIFY (default ENCRYPT_DECRYPT)")
	cmd.Flags().StringVar(&policyFile, "policy", "", "key policy JSON file (default: the account may use the key)")
	return cmd
}

func newKMSEncryptCmd() *cobra.Command {
	var cf kmsClientFlags
	var keyID string
	var ctxPairs []string
	cmd := &cobra.Command{
		Use:   "encrypt --key-id KEY",
		Short: "Encrypt stdin (≤ 4096 bytes); print the ciphertext blob in base64",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := kmsParseContext(ctxPairs)
			if err != nil {
				return err
			}
			pt, err := kmsReadInput(cmd, 4096)
			if err != nil {
				return withExit(1, err)
			}
			c, _, err := cf.client(cmd.Context())
			if err != nil {
				return withExit(1, err)
			}
			out, err := c.Encrypt(cmd.Context(), &awskms.EncryptInput{KeyId: aws.String(keyID), Plaintext: pt, EncryptionContext: ec})
			if err != nil {
				return withExit(1, err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(out.CiphertextBlob))
			return nil
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVar(&keyID, "key-id", "", "key id, ARN or alias (required)")
	cmd.Flags().StringArrayVar(&ctxPairs, "context", nil, "encryption context KEY=VALUE; repeatable")
	cmd.MarkFlagRequired("key-id")
	return cmd
}

func newKMSDecryptCmd() *cobra.Command {
	var cf kmsClientFlags
	var keyID string
	var ctxPairs []string
	cmd := &cobra.Command{
		Use:   "decrypt",
		Short: "Decrypt a base64 ciphertext blob from stdin; write the plaintext to stdout",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := kmsParseContext(ctxPairs)
			if err != nil {
				return err
			}
			in, err := kmsReadInput(cmd, 16384)
			if err != nil {
				return withExit(1, err)
			}
			blob, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(in)))
			if err != nil {
				return withExit(1, fmt.Errorf("stdin is not base64: %w", err))
			}
			c, _, err := cf.client(cmd.Context())
			if err != nil {
				return withExit(1, err)
			}
			req := &awskms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec}
			if keyID != "" {
				req.KeyId = aws.String(keyID)
			}
			out, err := c.Decrypt(cmd.Context(), req)
			if err != nil {
				return withExit(1, err)
			}
			_, err = cmd.OutOrStdout().Write(out.Plaintext)
			return err
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVar(&keyID, "key-id", "", "expected key (optional)")
	cmd.Flags().StringArrayVar(&ctxPairs, "context", nil, "encryption context KEY=VALUE; repeatable")
	return cmd
}

func newKMSExplainCmd() *cobra.Command {
	var cf kmsClientFlags
	var keyID, action, principal, policyFile, docFile, requestID string
	var ctxPairs []string
	cmd := &cobra.Command{
		Use:   "explain (--action ACTION (--key-id KEY | --policy FILE) | --request-id ID)",
		Short: "Dry-run a key-policy decision and print why (JSON)",
		Long: `explain asks the key service how its key policy (or the proposed policy in
--policy) decides a request: the decision and, per statement, whether the
principal, action, resource and each condition matched. --attestation-doc
supplies a Recipient attestation document (raw CBOR) whose PCRs feed the
kms:RecipientAttestation:* conditions. Explaining a stored policy requires
kms:GetKeyPolicy on the key.

--request-id ID instead shows why a request was denied: every
AccessDeniedException names its request id, and the service keeps the
statement-by-statement reasoning for a day (also in its audit log). Reading
it requires kms:GetKeyPolicy on the key that denied.

Exit status: 0 the request would be allowed, 1 denied or failed, 2 usage.`,
		Example: `  cloister kms explain --key-id alias/app --action Decrypt --principal arn:aws:iam::111122223333:role/enclave --attestation-doc doc.cbor
  cloister kms explain --request-id 0f6c1c2e-5d3b-4e0a-9a55-0b1f2a3c4d5e`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := kmsParseContext(ctxPairs)
			if err != nil {
				return err
			}
			switch {
			case requestID != "" && (keyID != "" || policyFile != "" || action != ""):
				return errors.New("--request-id takes no --key-id, --policy or --action")
			case requestID == "" && action == "":
				return errors.New("give --action, or --request-id")
			case requestID == "" && keyID == "" && policyFile == "":
				return errors.New("give --key-id, --policy or both")
			}
			in := kms.ExplainInput{KeyID: keyID, Action: action, PrincipalArn: principal, EncryptionContext: ec, RequestID: requestID}
			if policyFile != "" {
				p, err := os.ReadFile(policyFile)
				if err != nil {
					return withExit(1, err)
				}
				in.Policy = string(p)
			}
			if docFile != "" {
				d, err := os.ReadFile(docFile)
				if err != nil {
					return withExit(1, err)
				}
				in.Recipient = &kms.RecipientInfo{AttestationDocument: d, KeyEncryptionAlgorithm: "RSAES_OAEP_SHA_256"}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			c, cfg, err := cf.client(ctx)
			if err != nil {
				return withExit(1, err)
			}
			creds, err := cfg.Credentials.Retrieve(ctx)
			if err != nil {
				return withExit(1, fmt.Errorf("loading credentials: %w", err))
			}
			out, err := kms.CallExplain(ctx, http.DefaultClient, aws.ToString(c.Options().BaseEndpoint), cfg.Region, creds, in)
			if err != nil {
				return withExit(1, err)
			}
			if err := printJSON(cmd.OutOrStdout(), out, cloisterJSON); err != nil {
				return err
			}
			if out.Explanation.Decision != "Allow" {
				return withExit(1, fmt.Errorf("%s: %s", out.Explanation.Decision, out.Explanation.Reason))
			}
			return nil
		},
	}
	cf.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&keyID, "key-id", "", "key id, ARN or alias")
	fl.StringVar(&action, "action", "", "action, e.g. Decrypt or kms:GenerateDataKey")
	fl.StringVar(&requestID, "request-id", "", "explain this denied request instead (the id an AccessDeniedException names)")
	fl.StringVar(&principal, "principal", "", "principal ARN to simulate (default: the caller)")
	fl.StringVar(&policyFile, "policy", "", "evaluate this policy document instead of the stored one")
	fl.StringVar(&docFile, "attestation-doc", "", "attestation document file (raw CBOR) to use as Recipient")
	fl.StringArrayVar(&ctxPairs, "context", nil, "encryption context KEY=VALUE; repeatable")
	return cmd
}
