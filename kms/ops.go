package kms

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/kms/cms"
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

// --- key management ---

func (s *Server) createKey(c *call) (any, error) {
	var in createKeyInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	spec, usage, err := keySpecAndUsage(in)
	if err != nil {
		return nil, err
	}
	if in.Origin != nil && *in.Origin != "AWS_KMS" {
		return nil, apiErr(CodeUnsupportedOperation, "Origin %s is not supported; only AWS_KMS", *in.Origin)
	}
	if in.MultiRegion != nil && *in.MultiRegion {
		return nil, apiErr(CodeUnsupportedOperation, "multi-Region keys are not supported")
	}
	if in.CustomKeyStoreID != nil || in.XksKeyID != nil {
		return nil, apiErr(CodeUnsupportedOperation, "custom key stores are not supported")
	}
	tags, err := validTags(in.Tags)
	if err != nil {
		return nil, err
	}
	desc := ""
	if in.Description != nil {
		desc = *in.Description
	}
	if len(desc) > 8192 {
		return nil, apiErr(CodeValidation, "Description is longer than 8192 characters")
	}
	id := uuid.NewString()
	k := store.Key{
		ID: id, ARN: "arn:aws:kms:" + s.cfg.Region + ":" + c.cred.Account + ":key/" + id, Account: c.cred.Account,
		Description: desc, KeyUsage: usage, KeySpec: spec, State: store.Enabled, CreatedAt: s.now(),
		Policy: policy.Default(c.cred.Account),
	}
	for _, t := range tags {
		if k.Tags == nil {
			k.Tags = map[string]string{}
		}
		k.Tags[t.TagKey] = t.TagValue
	}
	c.audit.keyID = k.ARN
	if in.Policy != nil {
		if err := s.checkNewPolicy(c, k, *in.Policy, in.BypassPolicyLockoutSafetyCheck); err != nil {
			return nil, err
		}
		k.Policy = *in.Policy
	}
	secret, err := newMaterial(s.cfg.Rand, spec)
	if err != nil {
		return nil, err
	}
	if err := s.cfg.Store.CreateKey(c.ctx, k, secret); err != nil {
		return nil, err
	}
	k.CurrentVersion = 1
	c.audit.reason = "CreateKey is allowed to every authenticated principal"
	return keyMetadataOutput{s.metadata(k)}, nil
}

// checkNewPolicy validates a policy document and, unless bypassed, applies
// AWS's lockout safety check: the caller must still be allowed
// kms:PutKeyPolicy under the new policy.
func (s *Server) checkNewPolicy(c *call, k store.Key, doc string, bypass bool) error {
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		return apiErr(CodeMalformedPolicy, "%v", err)
	}
	if !bypass {
		if d := p.Evaluate(s.request(c, k, "kms:PutKeyPolicy", nil, nil)); d != policy.Allowed {
			return apiErr(CodeMalformedPolicy, "The new key policy will not allow you to update the key policy in the future (%s for %s). Set BypassPolicyLockoutSafetyCheck to override.", d, c.cred.PrincipalARN)
		}
	}
	return nil
}

func (s *Server) keyOp(c *call, action string) (store.Key, error) {
	var in keyIDInput
	if err := decode(c.body, &in); err != nil {
		return store.Key{}, err
	}
	k, err := s.resolveKey(c, in.KeyID)
	if err != nil {
		return store.Key{}, err
	}
	if err := s.authorize(c, k, action, nil, nil); err != nil {
		return store.Key{}, err
	}
	return k, nil
}

func (s *Server) describeKey(c *call) (any, error) {
	var in keyIDTokensInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	k, err := s.resolveKey(c, in.KeyID)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, k, "kms:DescribeKey", nil, nil); err != nil {
		return nil, err
	}
	return keyMetadataOutput{s.metadata(k)}, nil
}

func (s *Server) setState(c *call, action string, to store.KeyState) (any, error) {
	k, err := s.keyOp(c, action)
	if err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	_, err = s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		if k.State == store.PendingDeletion {
			return apiErr(CodeInvalidState, "%s is pending deletion.", k.ARN)
		}
		k.State = to
		return nil
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) enableKey(c *call) (any, error) {
	return s.setState(c, "kms:EnableKey", store.Enabled)
}
func (s *Server) disableKey(c *call) (any, error) {
	return s.setState(c, "kms:DisableKey", store.Disabled)
}

// page applies Limit/Marker pagination over n sorted items; the marker is
// the base64 of the last returned item's sort key.
func page(limit *int, marker string, keys []string) (start, end int, next string, err error) {
	l := 100
	if limit != nil {
		if *limit < 1 || *limit > 1000 {
			return 0, 0, "", apiErr(CodeValidation, "Limit must be between 1 and 1000")
		}
		l = *limit
	}
	if marker != "" {
		m, derr := base64.RawURLEncoding.DecodeString(marker)
		if derr != nil {
			return 0, 0, "", apiErr(CodeInvalidMarker, "Marker is invalid")
		}
		start = sort.SearchStrings(keys, string(m))
		if start < len(keys) && keys[start] == string(m) {
			start++
		}
	}
	end = min(start+l, len(keys))
	if end < len(keys) {
		next = base64.RawURLEncoding.EncodeToString([]byte(keys[end-1]))
	}
	return start, end, next, nil
}

func (s *Server) listKeys(c *call) (any, error) {
	var in listInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	all, err := s.cfg.Store.ListKeys(c.ctx)
	if err != nil {
		return nil, err
	}
	var mine []store.Key
	var ids []string
	for _, k := range all {
		if k.Account == c.cred.Account {
			mine = append(mine, k)
			ids = append(ids, k.ID)
		}
	}
	start, end, next, err := page(in.Limit, in.Marker, ids)
	if err != nil {
		return nil, err
	}
	out := listKeysOutput{Keys: []keyListEntry{}, NextMarker: next, Truncated: next != ""}
	for _, k := range mine[start:end] {
		out.Keys = append(out.Keys, keyListEntry{KeyID: k.ID, KeyArn: k.ARN})
	}
	c.audit.reason = "ListKeys lists the caller's account"
	return out, nil
}

// --- aliases ---

func validAliasName(name string) error {
	if !aliasNameOK(name) {
		return apiErr(CodeValidation, "Alias %q must be alias/ followed by 1-250 characters of [a-zA-Z0-9/_-]", name)
	}
	if strings.HasPrefix(name, "alias/aws/") {
		return apiErr(CodeInvalidAliasName, "Alias %s cannot begin with alias/aws/, which is reserved for AWS managed keys", name)
	}
	return nil
}

func (s *Server) createAlias(c *call) (any, error) {
	var in createAliasInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := validAliasName(in.AliasName); err != nil {
		return nil, err
	}
	if strings.HasPrefix(in.TargetKeyID, "alias/") || strings.Contains(in.TargetKeyID, ":alias/") {
		return nil, apiErr(CodeValidation, "TargetKeyId must be a key id or key ARN, not an alias")
	}
	k, err := s.resolveKey(c, in.TargetKeyID)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, k, "kms:CreateAlias", nil, nil); err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	if k.Account != c.cred.Account {
		return nil, apiErr(CodeValidation, "an alias must be in the same account as its key")
	}
	err = s.cfg.Store.CreateAlias(c.ctx, store.Alias{Name: aliasKey(c.cred.Account, in.AliasName), KeyID: k.ID, CreatedAt: s.now()})
	if errors.Is(err, store.ErrExists) {
		return nil, apiErr(CodeAlreadyExists, "An alias with the name %s already exists", s.aliasArn(c.cred.Account, in.AliasName))
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) deleteAlias(c *call) (any, error) {
	var in deleteAliasInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := validAliasName(in.AliasName); err != nil {
		return nil, err
	}
	k, err := s.resolveKey(c, in.AliasName)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, k, "kms:DeleteAlias", nil, nil); err != nil {
		return nil, err
	}
	err = s.cfg.Store.DeleteAlias(c.ctx, aliasKey(c.cred.Account, in.AliasName))
	if errors.Is(err, store.ErrNotFound) {
		return nil, apiErr(CodeNotFound, "Alias %s is not found.", s.aliasArn(c.cred.Account, in.AliasName))
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) listAliases(c *call) (any, error) {
	var in listInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	filter := ""
	if in.KeyID != "" {
		k, err := s.resolveKey(c, in.KeyID)
		if err != nil {
			return nil, err
		}
		filter = k.ID
	}
	all, err := s.cfg.Store.ListAliases(c.ctx)
	if err != nil {
		return nil, err
	}
	prefix := c.cred.Account + ":"
	var mine []store.Alias
	var names []string
	for _, a := range all {
		if strings.HasPrefix(a.Name, prefix) && (filter == "" || a.KeyID == filter) {
			mine = append(mine, a)
			names = append(names, a.Name)
		}
	}
	start, end, next, err := page(in.Limit, in.Marker, names)
	if err != nil {
		return nil, err
	}
	out := listAliasesOutput{Aliases: []aliasListEntry{}, NextMarker: next, Truncated: next != ""}
	for _, a := range mine[start:end] {
		name := strings.TrimPrefix(a.Name, prefix)
		out.Aliases = append(out.Aliases, aliasListEntry{
			AliasName: name, AliasArn: s.aliasArn(c.cred.Account, name), TargetKeyID: a.KeyID,
			CreationDate: epoch(a.CreatedAt), LastUpdatedDate: epoch(a.CreatedAt),
		})
	}
	c.audit.reason = "ListAliases lists the caller's account"
	return out, nil
}

// --- cryptography ---

// encryptUnder encrypts plaintext with the key's current material.
func (s *Server) encryptUnder(c *call, k store.Key, plaintext []byte, ec map[string]string) ([]byte, error) {
	m, err := s.cfg.Store.Material(c.ctx, k.ID, k.CurrentVersion)
	if err != nil {
		return nil, err
	}
	return sealBlob(s.cfg.Rand, k.ID, k.CurrentVersion, m, plaintext, ec)
}

// openCiphertext parses a blob, resolves its key (checking it against
// keyID when given), authorizes action and decrypts.
func (s *Server) openCiphertext(c *call, blob []byte, keyID string, ec map[string]string, action string, att *attestedRecipient) (store.Key, []byte, error) {
	if len(blob) == 0 || len(blob) > maxCiphertext {
		return store.Key{}, nil, apiErr(CodeValidation, "CiphertextBlob must be 1 to %d bytes", maxCiphertext)
	}
	h, err := parseBlob(blob)
	if err != nil {
		return store.Key{}, nil, apiErr(CodeInvalidCiphertext, "%v", err)
	}
	k, err := s.cfg.Store.GetKey(c.ctx, h.keyID)
	if errors.Is(err, store.ErrNotFound) {
		return store.Key{}, nil, apiErr(CodeInvalidCiphertext, "the key that encrypted this ciphertext does not exist")
	}
	if err != nil {
		return store.Key{}, nil, err
	}
	c.audit.keyID = k.ARN
	if keyID != "" {
		want, err := s.resolveKey(c, keyID)
		if err != nil {
			return store.Key{}, nil, err
		}
		if want.ID != k.ID {
			return store.Key{}, nil, apiErr(CodeIncorrectKey, "The key ID in the request does not identify a KMS key that can perform this operation.")
		}
	}
	if err := s.authorize(c, k, action, ec, att); err != nil {
		return store.Key{}, nil, err
	}
	if err := usable(k); err != nil {
		return store.Key{}, nil, err
	}
	m, err := s.cfg.Store.Material(c.ctx, k.ID, h.version)
	if errors.Is(err, store.ErrNotFound) {
		return store.Key{}, nil, apiErr(CodeInvalidCiphertext, "the key material version of this ciphertext does not exist")
	}
	if err != nil {
		return store.Key{}, nil, err
	}
	pt, err := openBlob(h, m, ec)
	if err != nil {
		return store.Key{}, nil, apiErr(CodeInvalidCiphertext, "%v", err)
	}
	return k, pt, nil
}

func (s *Server) encrypt(c *call) (any, error) {
	var in encryptInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if len(in.Plaintext) == 0 || len(in.Plaintext) > maxPlaintext {
		return nil, apiErr(CodeValidation, "Plaintext must be 1 to %d bytes", maxPlaintext)
	}
	if err := validateContext(in.EncryptionContext); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	k, err := s.cryptoKey(c, in.KeyID, "kms:Encrypt", usageEncrypt, in.EncryptionContext, nil)
	if err != nil {
		return nil, err
	}
	alg, err := encryptionAlgorithm(k, in.EncryptionAlgorithm)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, err := s.encryptWith(c, k, alg, in.Plaintext, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	return encryptOutput{CiphertextBlob: blob, KeyID: k.ARN, EncryptionAlgorithm: alg}, nil
}

// encryptWith encrypts under k with alg (already checked for k): a
// Cloister blob under the current material for SYMMETRIC_DEFAULT (after a
// due rotation), raw RSAES-OAEP otherwise.
func (s *Server) encryptWith(c *call, k store.Key, alg string, pt []byte, ec map[string]string) ([]byte, error) {
	if alg != symmetricDefault {
		return s.rsaEncrypt(c, k, alg, pt, ec)
	}
	k, err := s.maybeRotate(c, k)
	if err != nil {
		return nil, err
	}
	return s.encryptUnder(c, k, pt, ec)
}

// decryptAny decrypts a ciphertext: a Cloister blob names its symmetric
// key (checked against keyID when given); anything else is an asymmetric
// ciphertext, which needs keyID and the algorithm, as on AWS.
func (s *Server) decryptAny(c *call, blob []byte, keyID, alg string, ec map[string]string, action string, att *attestedRecipient) (store.Key, []byte, string, error) {
	if len(blob) == 0 || len(blob) > maxCiphertext {
		return store.Key{}, nil, "", apiErr(CodeValidation, "CiphertextBlob must be 1 to %d bytes", maxCiphertext)
	}
	if alg != "" {
		if err := checkEnum("encryptionAlgorithm", alg, allEncryptionAlgorithms); err != nil {
			return store.Key{}, nil, "", err
		}
	}
	if _, err := parseBlob(blob); err == nil || keyID == "" {
		if alg != "" && alg != symmetricDefault {
			return store.Key{}, nil, "", apiErr(CodeValidation, "KeyId is required to decrypt with %s (an asymmetric KMS key)", alg)
		}
		k, pt, err := s.openCiphertext(c, blob, keyID, ec, action, att)
		return k, pt, symmetricDefault, err
	}
	k, err := s.cryptoKey(c, keyID, action, usageEncrypt, ec, att)
	if err != nil {
		return store.Key{}, nil, "", err
	}
	if alg, err = encryptionAlgorithm(k, alg); err != nil {
		return store.Key{}, nil, "", err
	}
	if alg == symmetricDefault {
		return store.Key{}, nil, "", apiErr(CodeInvalidCiphertext, "the ciphertext is not a ciphertext of this key service")
	}
	pt, err := s.rsaDecrypt(c, k, alg, blob, ec)
	if err != nil {
		return store.Key{}, nil, "", err
	}
	return k, pt, alg, nil
}

func checkDryRunModifiers(m []string) error {
	for _, v := range m {
		if err := checkEnum("dryRunModifiers", v, []string{"IGNORE_CIPHERTEXT"}); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) decrypt(c *call) (any, error) {
	var in decryptInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := validateContext(in.EncryptionContext); err != nil {
		return nil, err
	}
	if err := checkDryRunModifiers(in.DryRunModifiers); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	att, err := s.checkRecipient(c, in.Recipient)
	if err != nil {
		return nil, err
	}
	k, pt, alg, err := s.decryptAny(c, in.CiphertextBlob, in.KeyID, in.EncryptionAlgorithm, in.EncryptionContext, "kms:Decrypt", att)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	out := decryptOutput{KeyID: k.ARN, EncryptionAlgorithm: alg}
	if att != nil {
		if out.CiphertextForRecipient, err = cms.Encrypt(s.cfg.Rand, att.spki, pt); err != nil {
			return nil, err
		}
	} else {
		out.Plaintext = pt
	}
	return out, nil
}

func (s *Server) reEncrypt(c *call) (any, error) {
	var in reEncryptInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := validateContext(in.SourceEncryptionContext); err != nil {
		return nil, err
	}
	if err := validateContext(in.DestinationEncryptionContext); err != nil {
		return nil, err
	}
	if err := checkDryRunModifiers(in.DryRunModifiers); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	dst, err := s.resolveKey(c, in.DestinationKeyID)
	if err != nil {
		return nil, err
	}
	src, pt, srcAlg, err := s.decryptAny(c, in.CiphertextBlob, in.SourceKeyID, in.SourceEncryptionAlgorithm, in.SourceEncryptionContext, "kms:ReEncryptFrom", nil)
	if err != nil {
		return nil, err
	}
	c.audit.keyID = src.ARN + " -> " + dst.ARN
	if err := s.authorize(c, dst, "kms:ReEncryptTo", in.DestinationEncryptionContext, nil); err != nil {
		return nil, err
	}
	if err := usable(dst); err != nil {
		return nil, err
	}
	if err := wantUsage(dst, usageEncrypt, "ReEncrypt"); err != nil {
		return nil, err
	}
	dstAlg, err := encryptionAlgorithm(dst, in.DestinationEncryptionAlgorithm)
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, err := s.encryptWith(c, dst, dstAlg, pt, in.DestinationEncryptionContext)
	if err != nil {
		return nil, err
	}
	return reEncryptOutput{CiphertextBlob: blob, SourceKeyID: src.ARN, KeyID: dst.ARN,
		SourceEncryptionAlgorithm: srcAlg, DestinationEncryptionAlgorithm: dstAlg}, nil
}

// dataKeySize validates NumberOfBytes/KeySpec: exactly one, 1..1024 bytes
// or AES_128/AES_256.
func dataKeySize(n *int, spec *string) (int, error) {
	switch {
	case n != nil && spec != nil:
		return 0, apiErr(CodeValidation, "specify either KeySpec or NumberOfBytes, not both")
	case n != nil:
		if *n < 1 || *n > 1024 {
			return 0, apiErr(CodeValidation, "NumberOfBytes must be between 1 and 1024")
		}
		return *n, nil
	case spec != nil:
		switch *spec {
		case "AES_256":
			return 32, nil
		case "AES_128":
			return 16, nil
		}
		return 0, apiErr(CodeValidation, "KeySpec %q must be AES_256 or AES_128", *spec)
	}
	return 0, apiErr(CodeValidation, "specify either KeySpec or NumberOfBytes")
}

func (s *Server) dataKey(c *call, in generateDataKeyInput, action string) (store.Key, []byte, []byte, *attestedRecipient, error) {
	n, err := dataKeySize(in.NumberOfBytes, in.KeySpec)
	if err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	if err := validateContext(in.EncryptionContext); err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	att, err := s.checkRecipient(c, in.Recipient)
	if err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	k, err := s.cryptoKey(c, in.KeyID, action, usageEncrypt, in.EncryptionContext, att)
	if err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	if k.KeySpec != symmetricDefault {
		return store.Key{}, nil, nil, nil, apiErr(CodeInvalidKeyUsage, "%s is not a symmetric encryption key; %s needs one.", k.ARN, action[len("kms:"):])
	}
	if in.DryRun {
		return store.Key{}, nil, nil, nil, dryRun()
	}
	if k, err = s.maybeRotate(c, k); err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	pt := make([]byte, n)
	if _, err := io.ReadFull(s.cfg.Rand, pt); err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	blob, err := s.encryptUnder(c, k, pt, in.EncryptionContext)
	if err != nil {
		return store.Key{}, nil, nil, nil, err
	}
	return k, pt, blob, att, nil
}

func (s *Server) generateDataKey(c *call) (any, error) {
	var in generateDataKeyInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	k, pt, blob, att, err := s.dataKey(c, in, "kms:GenerateDataKey")
	if err != nil {
		return nil, err
	}
	out := generateDataKeyOutput{CiphertextBlob: blob, KeyID: k.ARN}
	if att != nil {
		if out.CiphertextForRecipient, err = cms.Encrypt(s.cfg.Rand, att.spki, pt); err != nil {
			return nil, err
		}
	} else {
		out.Plaintext = pt
	}
	return out, nil
}

func (s *Server) generateDataKeyWithoutPlaintext(c *call) (any, error) {
	var in generateDataKeyInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.Recipient != nil {
		return nil, apiErr(CodeValidation, "GenerateDataKeyWithoutPlaintext does not take a Recipient")
	}
	k, _, blob, _, err := s.dataKey(c, in, "kms:GenerateDataKeyWithoutPlaintext")
	if err != nil {
		return nil, err
	}
	return generateDataKeyOutput{CiphertextBlob: blob, KeyID: k.ARN}, nil
}

// generateRandom is allowed to every authenticated principal (AWS gates it
// with IAM policies, which Cloister does not model); a Recipient must
// still verify and then receives the bytes enveloped.
func (s *Server) generateRandom(c *call) (any, error) {
	var in generateRandomInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.NumberOfBytes == nil || *in.NumberOfBytes < 1 || *in.NumberOfBytes > 1024 {
		return nil, apiErr(CodeValidation, "NumberOfBytes must be between 1 and 1024")
	}
	if in.CustomKeyStoreID != "" {
		return nil, apiErr(CodeUnsupportedOperation, "custom key stores are not supported")
	}
	att, err := s.checkRecipient(c, in.Recipient)
	if err != nil {
		return nil, err
	}
	b := make([]byte, *in.NumberOfBytes)
	if _, err := io.ReadFull(s.cfg.Rand, b); err != nil {
		return nil, err
	}
	c.audit.reason = "GenerateRandom is allowed to every authenticated principal"
	if att != nil {
		ct, err := cms.Encrypt(s.cfg.Rand, att.spki, b)
		if err != nil {
			return nil, err
		}
		return generateRandomOutput{CiphertextForRecipient: ct}, nil
	}
	return generateRandomOutput{Plaintext: b}, nil
}

// --- policy ---

func checkPolicyName(name string) error {
	if name != "" && name != "default" {
		return apiErr(CodeNotFound, "No such policy exists: %s (the only key policy is \"default\")", name)
	}
	return nil
}

func (s *Server) getKeyPolicy(c *call) (any, error) {
	var in getKeyPolicyInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := checkPolicyName(in.PolicyName); err != nil {
		return nil, err
	}
	k, err := s.resolveKey(c, in.KeyID)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, k, "kms:GetKeyPolicy", nil, nil); err != nil {
		return nil, err
	}
	return getKeyPolicyOutput{Policy: k.Policy, PolicyName: "default"}, nil
}

func (s *Server) putKeyPolicy(c *call) (any, error) {
	var in putKeyPolicyInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := checkPolicyName(in.PolicyName); err != nil {
		return nil, err
	}
	k, err := s.resolveKey(c, in.KeyID)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, k, "kms:PutKeyPolicy", nil, nil); err != nil {
		return nil, err
	}
	if err := s.checkNewPolicy(c, k, in.Policy, in.BypassPolicyLockoutSafetyCheck); err != nil {
		return nil, err
	}
	if _, err := s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error { k.Policy = in.Policy; return nil }); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// --- rotation ---

func (s *Server) enableKeyRotation(c *call) (any, error) {
	var in enableKeyRotationInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	days := defaultRotationDay
	if in.RotationPeriodInDays != nil {
		days = *in.RotationPeriodInDays
		if days < 90 || days > 2560 {
			return nil, apiErr(CodeValidation, "RotationPeriodInDays must be between 90 and 2560")
		}
	}
	k, err := s.resolveKey(c, in.KeyID)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, k, "kms:EnableKeyRotation", nil, nil); err != nil {
		return nil, err
	}
	if err := usable(k); err != nil {
		return nil, err
	}
	if err := rotatable(k); err != nil {
		return nil, err
	}
	now := s.now()
	_, err = s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		k.RotationEnabled, k.RotationPeriodDays = true, days
		k.NextRotation = now.Add(time.Duration(days) * 24 * time.Hour)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) disableKeyRotation(c *call) (any, error) {
	k, err := s.keyOp(c, "kms:DisableKeyRotation")
	if err != nil {
		return nil, err
	}
	if err := usable(k); err != nil {
		return nil, err
	}
	if err := rotatable(k); err != nil {
		return nil, err
	}
	_, err = s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		k.RotationEnabled, k.NextRotation = false, time.Time{}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) getKeyRotationStatus(c *call) (any, error) {
	k, err := s.keyOp(c, "kms:GetKeyRotationStatus")
	if err != nil {
		return nil, err
	}
	if err := rotatable(k); err != nil {
		return nil, err
	}
	out := getKeyRotationStatusOutput{KeyRotationEnabled: k.RotationEnabled, KeyID: k.ARN}
	if k.RotationEnabled {
		d, n := k.RotationPeriodDays, epoch(k.NextRotation)
		out.RotationPeriodInDays, out.NextRotationDate = &d, &n
	}
	return out, nil
}

func (s *Server) rotateKeyOnDemand(c *call) (any, error) {
	k, err := s.keyOp(c, "kms:RotateKeyOnDemand")
	if err != nil {
		return nil, err
	}
	if err := usable(k); err != nil {
		return nil, err
	}
	if err := rotatable(k); err != nil {
		return nil, err
	}
	if _, err := s.rotate(c, k.ID, true); err != nil {
		return nil, err
	}
	return keyIDOutput{KeyID: k.ID}, nil
}

// --- deletion ---

func (s *Server) scheduleKeyDeletion(c *call) (any, error) {
	var in scheduleKeyDeletionInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	days := 30
	if in.PendingWindowInDays != nil {
		days = *in.PendingWindowInDays
		if days < 7 || days > 30 {
			return nil, apiErr(CodeValidation, "PendingWindowInDays must be between 7 and 30")
		}
	}
	k, err := s.resolveKey(c, in.KeyID)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, k, "kms:ScheduleKeyDeletion", nil, nil); err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	when := s.now().Add(time.Duration(days) * 24 * time.Hour)
	k, err = s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		if k.State == store.PendingDeletion {
			return apiErr(CodeInvalidState, "%s is pending deletion.", k.ARN)
		}
		k.State, k.DeletionDate, k.PendingWindowDays = store.PendingDeletion, when, days
		return nil
	})
	if err != nil {
		return nil, err
	}
	return scheduleKeyDeletionOutput{KeyID: k.ARN, DeletionDate: epoch(when), KeyState: string(store.PendingDeletion), PendingWindowInDays: days}, nil
}

// cancelKeyDeletion leaves the key Disabled, as AWS does.
func (s *Server) cancelKeyDeletion(c *call) (any, error) {
	k, err := s.keyOp(c, "kms:CancelKeyDeletion")
	if err != nil {
		return nil, err
	}
	if k.State != store.PendingDeletion {
		return nil, apiErr(CodeInvalidState, "%s is not pending deletion.", k.ARN)
	}
	_, err = s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		k.State, k.DeletionDate, k.PendingWindowDays = store.Disabled, time.Time{}, 0
		return nil
	})
	if err != nil {
		return nil, err
	}
	return keyIDOutput{KeyID: k.ARN}, nil
}

// --- attestation ---

// attestedRecipient is a Recipient whose document verified.
type attestedRecipient struct {
	spki []byte
	pcrs map[int][]byte
}

// checkRecipient verifies a Recipient (nil → nil, nil). Shape problems are
// ValidationException: a KeyEncryptionAlgorithm other than
// RSAES_OAEP_SHA_256 (empty means that), an empty or oversized document, a
// document that does not parse, a public_key that is absent or not an RSA
// key of at least 2048 bits. Trust problems are AccessDeniedException: an
// untrusted root, a broken chain, an expired certificate, a bad signature,
// or a timestamp older than MaxAttestationAge (or more than 5 minutes in
// the future). Reusing a document within its age limit is allowed, as on
// AWS. Debug-mode documents are accepted here; their all-zero PCR0/1/2
// simply fail PCR conditions in the policy.
func (s *Server) checkRecipient(c *call, r *RecipientInfo) (*attestedRecipient, error) {
	if r == nil {
		return nil, nil
	}
	if r.KeyEncryptionAlgorithm != "" && r.KeyEncryptionAlgorithm != cms.KeyEncryptionRSAOAEPSHA256 {
		return nil, apiErr(CodeValidation, "Recipient.KeyEncryptionAlgorithm %q is not valid; the only value is RSAES_OAEP_SHA_256", r.KeyEncryptionAlgorithm)
	}
	pol := attest.Policy{PublicKey: attest.RequireRSAPublicKey(MinRecipientRSABits)}
	return s.checkAttestation(c, "Recipient", r.AttestationDocument, pol)
}

// checkSignAttestation verifies the CloisterAttestation member of a Sign
// request (nil → nil, nil) as checkRecipient does, without the RSA public
// key, and requires its user_data to equal digest, the exact bytes to be
// signed: a document made for one message does not get another signed.
func (s *Server) checkSignAttestation(c *call, sa *SignAttestation, digest []byte) (*attestedRecipient, error) {
	if sa == nil {
		return nil, nil
	}
	pol := attest.Policy{UserData: func(u []byte) error {
		if subtle.ConstantTimeCompare(u, digest) != 1 {
			return errors.New("user_data is not the digest being signed")
		}
		return nil
	}}
	return s.checkAttestation(c, "CloisterAttestation", sa.AttestationDocument, pol)
}

// checkAttestation verifies an attestation document and applies pol plus
// the server's age limit (debug documents allowed). Shape problems are
// ValidationException: an empty or oversized document, one that does not
// parse, a public key pol rejects. Trust problems are
// AccessDeniedException: an untrusted root, a broken chain, an expired
// certificate, a bad signature, a timestamp older than MaxAttestationAge
// (or more than 5 minutes in the future), any other check of pol.
func (s *Server) checkAttestation(c *call, member string, docBytes []byte, pol attest.Policy) (*attestedRecipient, error) {
	if len(docBytes) == 0 || len(docBytes) > maxAttestationDoc {
		return nil, apiErr(CodeValidation, "%s.AttestationDocument must be 1 to %d bytes", member, maxAttestationDoc)
	}
	now := s.now()
	v, err := s.attest.Verify(docBytes, now)
	if err != nil {
		if errors.Is(err, attest.ErrMalformed) || errors.Is(err, attest.ErrTooLarge) {
			return nil, apiErr(CodeValidation, "%s.AttestationDocument is not a valid attestation document: %v", member, err)
		}
		c.audit.reason = "attestation rejected: " + err.Error()
		return nil, apiErr(CodeAccessDenied, "User: %s is not authorized: the %s attestation document could not be verified: %v", c.cred.PrincipalARN, member, err)
	}
	doc := v.Document()
	c.audit.pcrs = make(map[string]string, len(doc.PCRs))
	for i, p := range doc.PCRs {
		c.audit.pcrs[strconv.Itoa(i)] = hex.EncodeToString(p)
	}
	pol.AllowDebug, pol.MaxAge = true, s.cfg.MaxAttestationAge
	if err := pol.Evaluate(v, now); err != nil {
		if errors.Is(err, attest.ErrPublicKey) {
			return nil, apiErr(CodeValidation, "%s.AttestationDocument must carry an RSA public key of at least %d bits (DER SubjectPublicKeyInfo): %v", member, MinRecipientRSABits, err)
		}
		c.audit.reason = "attestation rejected: " + err.Error()
		return nil, apiErr(CodeAccessDenied, "User: %s is not authorized: the %s attestation document is not acceptable: %v", c.cred.PrincipalARN, member, err)
	}
	return &attestedRecipient{spki: doc.PublicKey, pcrs: doc.PCRs}, nil
}

// --- explain ---

func (s *Server) explain(c *call) (any, error) {
	var in ExplainInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := validateContext(in.EncryptionContext); err != nil {
		return nil, err
	}
	if in.RequestID != "" {
		return s.explainDenial(c, in.RequestID)
	}
	action := in.Action
	if action == "" {
		return nil, apiErr(CodeValidation, "Action is required, e.g. kms:Decrypt")
	}
	if !strings.Contains(action, ":") {
		action = "kms:" + action
	}
	out := ExplainOutput{Action: action, Principal: c.cred.PrincipalARN}
	var k store.Key
	if in.KeyID != "" {
		var err error
		if k, err = s.resolveKey(c, in.KeyID); err != nil {
			return nil, err
		}
		// A dry run reveals the policy's reasoning: only for callers who
		// may read the policy.
		if err := s.authorize(c, k, "kms:GetKeyPolicy", nil, nil); err != nil {
			return nil, err
		}
		out.KeyID = k.ARN
	} else if in.Policy == "" {
		return nil, apiErr(CodeValidation, "give KeyId, Policy or both")
	} else {
		k = store.Key{ARN: "arn:aws:kms:" + s.cfg.Region + ":" + c.cred.Account + ":key/00000000-0000-0000-0000-000000000000", Account: c.cred.Account}
	}
	doc := k.Policy
	if in.Policy != "" {
		doc = in.Policy
	}
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		return nil, apiErr(CodeMalformedPolicy, "%v", err)
	}
	var att *attestedRecipient
	if in.Recipient != nil {
		rep := &AttestationReport{}
		a, err := s.checkRecipient(c, in.Recipient)
		if err != nil {
			var ae *APIError
			if errors.As(err, &ae) {
				rep.Error = ae.Message
			} else {
				return nil, err
			}
		} else {
			att, rep.Valid = a, true
			rep.PCRs = map[string]string{}
			for i, v := range a.pcrs {
				rep.PCRs[strconv.Itoa(i)] = hex.EncodeToString(v)
			}
		}
		out.Attestation = rep
	}
	cc := *c
	if in.PrincipalArn != "" {
		cc.cred.PrincipalARN = in.PrincipalArn
		if p := strings.SplitN(in.PrincipalArn, ":", 6); len(p) == 6 {
			cc.cred.Account = p[4]
		}
		out.Principal = in.PrincipalArn
	}
	out.Explanation = p.Explain(s.request(&cc, k, action, in.EncryptionContext, att))
	c.audit.reason = "dry run"
	return out, nil
}

// explainDenial returns the recorded reasoning of a denied request. It is
// shown to callers of the same account who may read the key's policy now
// (kms:GetKeyPolicy), as CloisterExplain requires for a stored policy; a
// denial that named no key is shown to the denied principal only.
func (s *Server) explainDenial(c *call, requestID string) (any, error) {
	if len(requestID) > 64 {
		return nil, apiErr(CodeValidation, "RequestId is longer than 64 characters")
	}
	notFound := apiErr(CodeNotFound, "No denied request %s is on record (denials are kept %s)", requestID, s.cfg.DenialRetention)
	d, err := s.cfg.Store.GetDenial(c.ctx, requestID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && d.Account != c.cred.Account) {
		return nil, notFound
	}
	if err != nil {
		return nil, err
	}
	if d.KeyID != "" {
		k, err := s.resolveKey(c, "arn:aws:kms:"+s.cfg.Region+":"+d.Account+":key/"+d.KeyID)
		if err != nil {
			return nil, err
		}
		if err := s.authorize(c, k, "kms:GetKeyPolicy", nil, nil); err != nil {
			return nil, err
		}
	} else if d.Principal != c.cred.PrincipalARN {
		return nil, notFound
	}
	out := ExplainOutput{KeyID: d.KeyARN, Action: d.Action, Principal: d.Principal, RequestID: d.RequestID, At: epoch(d.At)}
	if len(d.Explanation) > 0 {
		if err := json.Unmarshal(d.Explanation, &out.Explanation); err != nil {
			return nil, fmt.Errorf("kms: recorded denial %s: %w", requestID, err)
		}
	} else {
		out.Explanation = policy.Explanation{Decision: "Denied", Reason: d.Reason, Statements: []policy.StatementExplanation{}}
	}
	c.audit.reason = "explained denied request " + requestID
	return out, nil
}
