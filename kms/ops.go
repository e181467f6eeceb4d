package kms

// ops.go holds what the operations share: key resolution, authorization,
// validation and metadata. The operations themselves are one file per
// resource: keys.go, aliases.go, crypto_ops.go, asym.go, grants.go, tags.go,
// keypolicy.go, rotation.go, deletion.go, attestation.go, explain.go.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cloister/cloister/kms/policy"
	"github.com/cloister/cloister/kms/store"
)

const (
	symmetricDefault   = "SYMMETRIC_DEFAULT"
	encryptDecrypt     = "ENCRYPT_DECRYPT"
	maxPlaintext       = 4096
	maxCiphertext      = 6144
	maxAttestationDoc  = 262144
	maxContextPairs    = 64
	maxContextBytes    = 8192 // also bounds policy wildcard matching cost
	defaultRotationDay = 365
)

// aliasNameOK reports whether name matches ^alias/[a-zA-Z0-9/_-]{1,250}$
// (checked by hand: the regular expression's bounded repetition compiles
// into a program large enough to cost every process start milliseconds).
func aliasNameOK(name string) bool {
	rest, ok := strings.CutPrefix(name, "alias/")
	if !ok || len(rest) < 1 || len(rest) > 250 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '/' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func epoch(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }

func (s *Server) now() time.Time { return s.cfg.Clock().UTC() }

// aliasKey is the store name of an alias: aliases are per account.
func aliasKey(account, name string) string { return account + ":" + name }

func (s *Server) aliasArn(account, name string) string {
	return "arn:aws:kms:" + s.cfg.Region + ":" + account + ":" + name
}

// resolveKey turns any KeyId form (key id, key ARN, alias name, alias ARN)
// into a stored key. Bare ids and alias names resolve in the caller's
// account only; ARNs may name another account's key (the key policy then
// decides). Keys whose deletion date has passed are purged and reported as
// not found.
func (s *Server) resolveKey(c *call, keyID string) (store.Key, error) {
	if keyID == "" {
		return store.Key{}, apiErr(CodeValidation, "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null")
	}
	if len(keyID) > 2048 {
		return store.Key{}, apiErr(CodeValidation, "KeyId is longer than 2048 characters")
	}
	account, id, alias := c.cred.Account, keyID, ""
	if strings.HasPrefix(keyID, "arn:") {
		p := strings.SplitN(keyID, ":", 6)
		if len(p) != 6 || p[2] != "kms" || p[4] == "" {
			return store.Key{}, apiErr(CodeInvalidArn, "%s is not a valid KMS ARN", keyID)
		}
		account = p[4]
		switch {
		case strings.HasPrefix(p[5], "key/"):
			id = strings.TrimPrefix(p[5], "key/")
		case strings.HasPrefix(p[5], "alias/"):
			alias = p[5]
		default:
			return store.Key{}, apiErr(CodeInvalidArn, "%s names neither a key nor an alias", keyID)
		}
	} else if strings.HasPrefix(keyID, "alias/") {
		alias = keyID
	}
	if alias != "" {
		a, err := s.cfg.Store.GetAlias(c.ctx, aliasKey(account, alias))
		if errors.Is(err, store.ErrNotFound) {
			return store.Key{}, apiErr(CodeNotFound, "Alias %s is not found.", s.aliasArn(account, alias))
		}
		if err != nil {
			return store.Key{}, err
		}
		id = a.KeyID
	}
	k, err := s.cfg.Store.GetKey(c.ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && k.Account != account) {
		return store.Key{}, apiErr(CodeNotFound, "Key 'arn:aws:kms:%s:%s:key/%s' does not exist", s.cfg.Region, account, id)
	}
	if err != nil {
		return store.Key{}, err
	}
	if k.State == store.PendingDeletion && !s.now().Before(k.DeletionDate) {
		if err := s.cfg.Store.DeleteKey(c.ctx, k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return store.Key{}, err
		}
		s.log.Info("kms key deleted after its waiting period", "key", k.ARN)
		return store.Key{}, apiErr(CodeNotFound, "Key '%s' does not exist", k.ARN)
	}
	c.audit.keyID = k.ARN
	return k, nil
}

// PurgeDeleted deletes every key whose scheduled deletion date has passed
// and the recorded denials older than DenialRetention, and returns how many
// keys it deleted. Serve calls it periodically; requests also purge keys
// lazily.
func (s *Server) PurgeDeleted(ctx context.Context) (int, error) {
	if _, err := s.cfg.Store.PurgeDenials(ctx, s.now().Add(-s.cfg.DenialRetention)); err != nil {
		return 0, err
	}
	keys, err := s.cfg.Store.ListKeys(ctx)
	if err != nil {
		return 0, err
	}
	now, n := s.now(), 0
	for _, k := range keys {
		if k.State != store.PendingDeletion || now.Before(k.DeletionDate) {
			continue
		}
		if err := s.cfg.Store.DeleteKey(ctx, k.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return n, err
		}
		s.log.Info("kms key deleted after its waiting period", "key", k.ARN)
		n++
	}
	return n, nil
}

// policyCache holds parsed key policies by their text.
var policyCache = struct {
	sync.Mutex
	m map[string]*policy.Policy
}{m: map[string]*policy.Policy{}}

func parsedPolicy(doc string) (*policy.Policy, error) {
	policyCache.Lock()
	p, ok := policyCache.m[doc]
	policyCache.Unlock()
	if ok {
		return p, nil
	}
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		return nil, err
	}
	policyCache.Lock()
	if len(policyCache.m) > 4096 {
		clear(policyCache.m)
	}
	policyCache.m[doc] = p
	policyCache.Unlock()
	return p, nil
}

// request builds the policy request for the caller.
func (s *Server) request(c *call, k store.Key, action string, ec map[string]string, att *attestedRecipient) policy.Request {
	req := policy.Request{PrincipalARN: c.cred.PrincipalARN, Account: c.cred.Account, Action: action, Resource: k.ARN}
	req.SetEncryptionContext(ec)
	if att != nil {
		req.SetAttestation(att.pcrs)
	}
	return req
}

// authorize evaluates the key policy for action and, when no statement
// applies, the key's grants (an explicit deny wins over any grant); denial
// is AccessDeniedException with AWS's wording.
func (s *Server) authorize(c *call, k store.Key, action string, ec map[string]string, att *attestedRecipient) error {
	p, err := parsedPolicy(k.Policy)
	if err != nil {
		return fmt.Errorf("kms: stored policy of %s: %w", k.ID, err)
	}
	ex := p.Explain(s.request(c, k, action, ec, att))
	c.audit.decision, c.audit.reason = string(ex.Decision), ex.Reason
	c.audit.action, c.audit.keyUUID, c.audit.keyID, c.audit.explanation = action, k.ID, k.ARN, &ex
	switch ex.Decision {
	case policy.Allowed:
		return nil
	case policy.ImplicitDeny:
		if g := grantAllows(k, c, action, ec); g != nil {
			c.grant = g
			c.audit.decision, c.audit.reason = "Allow", "allowed by grant "+g.ID+" (the key policy alone: "+ex.Reason+")"
			return nil
		}
	}
	switch ex.Decision {
	case policy.ExplicitDeny:
		return apiErr(CodeAccessDenied, "User: %s is not authorized to perform: %s on resource: %s with an explicit deny in a resource-based policy", c.cred.PrincipalARN, action, k.ARN)
	default:
		return apiErr(CodeAccessDenied, "User: %s is not authorized to perform: %s on resource: %s because no resource-based policy allows the %s action", c.cred.PrincipalARN, action, k.ARN, action)
	}
}

// usable checks a key can do cryptography.
func usable(k store.Key) error {
	switch k.State {
	case store.Enabled:
		return nil
	case store.Disabled:
		return apiErr(CodeDisabled, "%s is disabled.", k.ARN)
	default:
		return apiErr(CodeInvalidState, "%s is pending deletion.", k.ARN)
	}
}

func notPendingDeletion(k store.Key) error {
	if k.State == store.PendingDeletion {
		return apiErr(CodeInvalidState, "%s is pending deletion.", k.ARN)
	}
	return nil
}

func validateContext(ec map[string]string) error {
	if len(ec) > maxContextPairs {
		return apiErr(CodeValidation, "EncryptionContext has more than %d pairs", maxContextPairs)
	}
	total := 0
	keys := make([]string, 0, len(ec))
	for k, v := range ec {
		if k == "" {
			return apiErr(CodeValidation, "EncryptionContext keys must not be empty")
		}
		total += len(k) + len(v)
		keys = append(keys, k)
	}
	if total > maxContextBytes {
		return apiErr(CodeValidation, "EncryptionContext is longer than %d characters in total", maxContextBytes)
	}
	// Key policies match kms:EncryptionContext:<key> ignoring case, so two
	// such keys would make a condition see either value. At most
	// maxContextPairs keys: pairwise is cheap.
	sort.Strings(keys)
	for i, a := range keys {
		for _, b := range keys[i+1:] {
			if policy.SameContextKey(a, b) {
				return apiErr(CodeValidation, "EncryptionContext keys %q and %q differ only in case; key policy conditions cannot tell them apart: use one key", a, b)
			}
		}
	}
	return nil
}

// rotatable: only symmetric encryption keys rotate, as on AWS.
func rotatable(k store.Key) error {
	if k.KeySpec != symmetricDefault {
		return apiErr(CodeUnsupportedOperation, "%s has KeySpec %s; only symmetric encryption keys support rotation.", k.ARN, k.KeySpec)
	}
	return nil
}

func dryRun() error {
	return apiErr(CodeDryRunOperation, "The request would have succeeded, but the DryRun option is set.")
}

// errNotDue aborts an automatic rotation another server already made.
var errNotDue = errors.New("kms: rotation no longer due")

// maybeRotate performs a due automatic rotation of a symmetric key. The
// due check is repeated under the store's lock, so servers sharing a store
// rotate a key once per period.
func (s *Server) maybeRotate(c *call, k store.Key) (store.Key, error) {
	if !k.RotationEnabled || k.State != store.Enabled || s.now().Before(k.NextRotation) || k.KeySpec != symmetricDefault {
		return k, nil
	}
	r, err := s.rotate(c, k.ID, false)
	if errors.Is(err, errNotDue) {
		return s.cfg.Store.GetKey(c.ctx, k.ID)
	}
	return r, err
}

func (s *Server) rotate(c *call, id string, onDemand bool) (store.Key, error) {
	secret := make([]byte, 32)
	if _, err := io.ReadFull(s.cfg.Rand, secret); err != nil {
		return store.Key{}, err
	}
	now := s.now()
	k, err := s.cfg.Store.Rotate(c.ctx, id, secret, func(k *store.Key) error {
		if !onDemand && (!k.RotationEnabled || now.Before(k.NextRotation)) {
			return errNotDue
		}
		k.Rotations = append(k.Rotations, store.Rotation{Version: k.CurrentVersion + 1, CreatedAt: now, OnDemand: onDemand})
		if k.RotationEnabled && !onDemand {
			k.NextRotation = now.Add(time.Duration(k.RotationPeriodDays) * 24 * time.Hour)
		}
		return nil
	})
	if err != nil {
		return store.Key{}, err
	}
	s.log.Info("kms key rotated", "key", k.ARN, "version", k.CurrentVersion, "on_demand", onDemand)
	return k, nil
}

func (s *Server) metadata(k store.Key) KeyMetadata {
	m := KeyMetadata{
		AWSAccountID: k.Account, KeyID: k.ID, Arn: k.ARN, CreationDate: epoch(k.CreatedAt),
		Enabled: k.State == store.Enabled, Description: k.Description, KeyUsage: k.KeyUsage,
		KeyState: string(k.State), Origin: "AWS_KMS", KeyManager: "CUSTOMER",
		CustomerMasterKeySpec: k.KeySpec, KeySpec: k.KeySpec,
	}
	m.SigningAlgorithms, m.EncryptionAlgorithms, m.MacAlgorithms, m.KeyAgreementAlgorithms = algorithms(k.KeySpec, k.KeyUsage)
	if k.State == store.PendingDeletion {
		d, w := epoch(k.DeletionDate), k.PendingWindowDays
		m.DeletionDate, m.PendingDeletionWindowInDays = &d, &w
	}
	return m
}
