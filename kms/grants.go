package kms

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/cloister/cloister/kms/policy"
	"github.com/cloister/cloister/kms/store"
)

// Grant limits.
const (
	maxGrantsPerKey = 1000
	maxGrantTokens  = 10
	maxGrantToken   = 8192
	grantTokenMagic = "CGT1"
)

// GrantConstraints are a grant's encryption-context constraints.
type GrantConstraints struct {
	EncryptionContextSubset map[string]string `json:"EncryptionContextSubset,omitempty"`
	EncryptionContextEquals map[string]string `json:"EncryptionContextEquals,omitempty"`
}

type createGrantInput struct {
	KeyID                    string            `json:"KeyId"`
	GranteePrincipal         string            `json:"GranteePrincipal"`
	RetiringPrincipal        string            `json:"RetiringPrincipal"`
	GranteeServicePrincipal  *string           `json:"GranteeServicePrincipal"`
	RetiringServicePrincipal *string           `json:"RetiringServicePrincipal"`
	Operations               []string          `json:"Operations"`
	Constraints              *GrantConstraints `json:"Constraints"`
	GrantTokens              []string          `json:"GrantTokens"`
	Name                     string            `json:"Name"`
	DryRun                   bool              `json:"DryRun"`
}

type createGrantOutput struct {
	GrantToken string `json:"GrantToken"`
	GrantID    string `json:"GrantId"`
}

type listGrantsInput struct {
	KeyID                   string  `json:"KeyId"`
	Limit                   *int    `json:"Limit"`
	Marker                  string  `json:"Marker"`
	GrantID                 string  `json:"GrantId"`
	GranteePrincipal        string  `json:"GranteePrincipal"`
	GranteeServicePrincipal *string `json:"GranteeServicePrincipal"`
}

type listRetirableGrantsInput struct {
	Limit                    *int    `json:"Limit"`
	Marker                   string  `json:"Marker"`
	RetiringPrincipal        string  `json:"RetiringPrincipal"`
	RetiringServicePrincipal *string `json:"RetiringServicePrincipal"`
}

type grantListEntry struct {
	KeyID             string            `json:"KeyId"`
	GrantID           string            `json:"GrantId"`
	Name              string            `json:"Name,omitempty"`
	CreationDate      float64           `json:"CreationDate"`
	GranteePrincipal  string            `json:"GranteePrincipal"`
	RetiringPrincipal string            `json:"RetiringPrincipal,omitempty"`
	IssuingAccount    string            `json:"IssuingAccount"`
	Operations        []string          `json:"Operations"`
	Constraints       *GrantConstraints `json:"Constraints,omitempty"`
}

type listGrantsOutput struct {
	Grants     []grantListEntry `json:"Grants"`
	NextMarker string           `json:"NextMarker,omitempty"`
	Truncated  bool             `json:"Truncated"`
}

type retireGrantInput struct {
	GrantToken string `json:"GrantToken"`
	KeyID      string `json:"KeyId"`
	GrantID    string `json:"GrantId"`
	DryRun     bool   `json:"DryRun"`
}

type revokeGrantInput struct {
	KeyID   string `json:"KeyId"`
	GrantID string `json:"GrantId"`
	DryRun  bool   `json:"DryRun"`
}

// grantOperations is AWS's GrantOperation enum.
var grantOperations = []string{"Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
	"ReEncryptFrom", "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey",
	"GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac", "DeriveSharedSecret"}

// contextOperations take an encryption context, so grant constraints
// apply to them.
var contextOperations = []string{"Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
	"ReEncryptFrom", "ReEncryptTo", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"}

// grantOpsFor lists the grant operations a key can have.
func grantOpsFor(k store.Key) []string {
	ops := []string{"CreateGrant", "RetireGrant", "DescribeKey"}
	switch {
	case k.KeySpec == symmetricDefault:
		ops = append(ops, contextOperations...)
	case k.KeyUsage == usageEncrypt:
		ops = append(ops, "Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey")
	case k.KeyUsage == usageSign:
		ops = append(ops, "Sign", "Verify", "GetPublicKey")
	case k.KeyUsage == usageMAC:
		ops = append(ops, "GenerateMac", "VerifyMac")
	case k.KeyUsage == usageAgreement:
		ops = append(ops, "DeriveSharedSecret", "GetPublicKey")
	}
	return ops
}

// GrantToken returns the grant token of a grant: it names the key and the
// grant. Grants take effect at once here (the store is consistent), so a
// token is only checked for form, as AWS does for a grant already in
// effect.
func grantToken(keyID, grantID string) string {
	return grantTokenMagic + base64.RawURLEncoding.EncodeToString([]byte(keyID+"/"+grantID))
}

// parseGrantToken returns the key and grant a token names.
func parseGrantToken(t string) (keyID, grantID string, ok bool) {
	rest, found := strings.CutPrefix(t, grantTokenMagic)
	if !found || len(t) > maxGrantToken {
		return "", "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return "", "", false
	}
	keyID, grantID, ok = strings.Cut(string(b), "/")
	if !ok || keyID == "" || len(keyID) > maxKeyIDLen || !grantIDOK(grantID) || grantToken(keyID, grantID) != t {
		return "", "", false
	}
	return keyID, grantID, true
}

// grantIDOK: grant ids are 64 lower-case hex digits.
func grantIDOK(id string) bool {
	if len(id) != 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// checkGrantTokens validates the GrantTokens member of a request: at most
// 10, each a token this service issued (InvalidGrantTokenException
// otherwise).
func (s *Server) checkGrantTokens(tokens []string) error {
	if len(tokens) > maxGrantTokens {
		return apiErr(CodeValidation, "1 validation error detected: Value at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to %d", maxGrantTokens)
	}
	for _, t := range tokens {
		if _, _, ok := parseGrantToken(t); !ok {
			return apiErr(CodeInvalidGrantToken, "The grant token is not valid.")
		}
	}
	return nil
}

// grantAllows finds a grant on k that lets the caller perform action with
// encryption context ec: the grantee matches the caller, the operation is
// listed, and for operations that take an encryption context the
// constraints hold (EncryptionContextSubset: every pair present;
// EncryptionContextEquals: exactly these pairs).
func grantAllows(k store.Key, c *call, action string, ec map[string]string) *store.Grant {
	op := strings.TrimPrefix(action, "kms:")
	for i := range k.Grants {
		g := &k.Grants[i]
		if !slices.Contains(g.Operations, op) || !policy.PrincipalMatches(g.GranteePrincipal, c.cred.PrincipalARN, c.cred.Account) {
			continue
		}
		if slices.Contains(contextOperations, op) && !constraintsHold(g, ec) {
			continue
		}
		return g
	}
	return nil
}

func constraintsHold(g *store.Grant, ec map[string]string) bool {
	if g.ContextEquals != nil && !maps.Equal(g.ContextEquals, ec) {
		return false
	}
	for k, v := range g.ContextSubset {
		if w, ok := ec[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func grantNameOK(n string) bool {
	if len(n) < 1 || len(n) > 256 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == ':' || c == '/' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func principalArnOK(p string) bool {
	return len(p) >= 1 && len(p) <= 256 && (strings.HasPrefix(p, "arn:") || accountIDOK(p))
}

func accountIDOK(p string) bool {
	if len(p) != 12 {
		return false
	}
	for i := 0; i < 12; i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
	}
	return true
}

func (s *Server) createGrant(c *call) (any, error) {
	var in createGrantInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.GranteeServicePrincipal != nil || in.RetiringServicePrincipal != nil {
		return nil, apiErr(CodeUnsupportedOperation, "service principals are not supported by this key service")
	}
	if !principalArnOK(in.GranteePrincipal) {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value at 'granteePrincipal' failed to satisfy constraint: Member must be a principal ARN")
	}
	if in.RetiringPrincipal != "" && !principalArnOK(in.RetiringPrincipal) {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value at 'retiringPrincipal' failed to satisfy constraint: Member must be a principal ARN")
	}
	if len(in.Operations) == 0 {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value null at 'operations' failed to satisfy constraint: Member must not be null")
	}
	for _, op := range in.Operations {
		if err := checkEnum("operations", op, grantOperations); err != nil {
			return nil, err
		}
	}
	if in.Name != "" && !grantNameOK(in.Name) {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$")
	}
	var subset, equals map[string]string
	if in.Constraints != nil {
		subset, equals = in.Constraints.EncryptionContextSubset, in.Constraints.EncryptionContextEquals
		for _, m := range []map[string]string{subset, equals} {
			if err := validateContext(m); err != nil {
				return nil, err
			}
		}
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:CreateGrant")
	if err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	allowed := grantOpsFor(k)
	for _, op := range in.Operations {
		if !slices.Contains(allowed, op) {
			return nil, apiErr(CodeValidation, "Grant operation %s is not valid for %s (KeySpec %s, KeyUsage %s); valid operations: %s", op, k.ARN, k.KeySpec, k.KeyUsage, enumList(allowed))
		}
	}
	if (subset != nil || equals != nil) && k.KeySpec != symmetricDefault {
		return nil, apiErr(CodeValidation, "Encryption context grant constraints are supported only for symmetric encryption keys, not %s (%s)", k.ARN, k.KeySpec)
	}
	// A grant that was used to authorize this request bounds the new one:
	// no operation it lacks, and at least its constraints.
	if parent := c.grant; parent != nil {
		for _, op := range in.Operations {
			if !slices.Contains(parent.Operations, op) {
				return nil, apiErr(CodeAccessDenied, "User: %s is not authorized to grant %s on %s: the grant that allows CreateGrant does not include it", c.cred.PrincipalARN, op, k.ARN)
			}
		}
		if subset, err = mergeConstraint(parent.ContextSubset, subset); err != nil {
			return nil, err
		}
		if parent.ContextEquals != nil {
			if equals != nil && !maps.Equal(equals, parent.ContextEquals) {
				return nil, apiErr(CodeAccessDenied, "User: %s is not authorized: the new grant's EncryptionContextEquals must equal that of the grant that allows CreateGrant", c.cred.PrincipalARN)
			}
			equals = maps.Clone(parent.ContextEquals)
		}
	}
	if in.DryRun {
		return nil, dryRun()
	}
	idb := make([]byte, 32)
	if _, err := rand.Read(idb); err != nil {
		return nil, err
	}
	g := store.Grant{ID: hex.EncodeToString(idb), Name: in.Name, GranteePrincipal: in.GranteePrincipal, RetiringPrincipal: in.RetiringPrincipal,
		IssuingAccount: "arn:aws:iam::" + c.cred.Account + ":root", Operations: slices.Clone(in.Operations), CreatedAt: s.now(),
		ContextSubset: subset, ContextEquals: equals}
	_, err = s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		if in.Name != "" {
			for _, old := range k.Grants {
				if old.Name == g.Name && old.GranteePrincipal == g.GranteePrincipal && old.RetiringPrincipal == g.RetiringPrincipal &&
					slices.Equal(old.Operations, g.Operations) && maps.Equal(old.ContextSubset, g.ContextSubset) && maps.Equal(old.ContextEquals, g.ContextEquals) {
					g = old // the same named grant again: AWS returns the existing grant
					return nil
				}
			}
		}
		if len(k.Grants) >= maxGrantsPerKey {
			return apiErr(CodeLimitExceeded, "%s already has %d grants", k.ARN, maxGrantsPerKey)
		}
		k.Grants = append(k.Grants, g)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return createGrantOutput{GrantToken: grantToken(k.ID, g.ID), GrantID: g.ID}, nil
}

// mergeConstraint adds a parent grant's EncryptionContextSubset pairs to a
// child's; a pair with another value is refused.
func mergeConstraint(parent, child map[string]string) (map[string]string, error) {
	if parent == nil {
		return child, nil
	}
	out := maps.Clone(parent)
	for k, v := range child {
		if w, ok := out[k]; ok && w != v {
			return nil, apiErr(CodeAccessDenied, "the new grant's EncryptionContextSubset conflicts with that of the grant that allows CreateGrant (%s)", k)
		}
		out[k] = v
	}
	return out, nil
}

func (s *Server) listEntry(k store.Key, g store.Grant) grantListEntry {
	e := grantListEntry{KeyID: k.ARN, GrantID: g.ID, Name: g.Name, CreationDate: epoch(g.CreatedAt), GranteePrincipal: g.GranteePrincipal,
		RetiringPrincipal: g.RetiringPrincipal, IssuingAccount: g.IssuingAccount, Operations: g.Operations}
	if g.ContextSubset != nil || g.ContextEquals != nil {
		e.Constraints = &GrantConstraints{EncryptionContextSubset: g.ContextSubset, EncryptionContextEquals: g.ContextEquals}
	}
	return e
}

func (s *Server) listGrants(c *call) (any, error) {
	var in listGrantsInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.GranteeServicePrincipal != nil {
		return nil, apiErr(CodeUnsupportedOperation, "service principals are not supported by this key service")
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:ListGrants")
	if err != nil {
		return nil, err
	}
	var sel []grantListEntry
	for _, g := range k.Grants {
		if (in.GrantID == "" || g.ID == in.GrantID) && (in.GranteePrincipal == "" || g.GranteePrincipal == in.GranteePrincipal) {
			sel = append(sel, s.listEntry(k, g))
		}
	}
	return pageGrants(in.Limit, in.Marker, sel)
}

// pageGrants pages entries in the order given; the marker is the
// base64 of the next entry's index.
func pageGrants(limit *int, marker string, sel []grantListEntry) (any, error) {
	l := 100
	if limit != nil {
		if *limit < 1 || *limit > 1000 {
			return nil, apiErr(CodeValidation, "Limit must be between 1 and 1000")
		}
		l = *limit
	}
	start := 0
	if marker != "" {
		m, err := base64.RawURLEncoding.DecodeString(marker)
		n, aerr := strconv.Atoi(string(m))
		if err != nil || aerr != nil || n < 0 || n > len(sel) {
			return nil, apiErr(CodeInvalidMarker, "Marker is invalid")
		}
		start = n
	}
	end := min(start+l, len(sel))
	out := listGrantsOutput{Grants: append([]grantListEntry{}, sel[start:end]...)}
	if end < len(sel) {
		out.NextMarker, out.Truncated = base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(end))), true
	}
	return out, nil
}

func (s *Server) listRetirableGrants(c *call) (any, error) {
	var in listRetirableGrantsInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.RetiringServicePrincipal != nil {
		return nil, apiErr(CodeUnsupportedOperation, "service principals are not supported by this key service")
	}
	if !principalArnOK(in.RetiringPrincipal) {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value at 'retiringPrincipal' failed to satisfy constraint: Member must be a principal ARN")
	}
	keys, err := s.cfg.Store.ListKeys(c.ctx)
	if err != nil {
		return nil, err
	}
	var sel []grantListEntry
	for _, k := range keys {
		if k.Account != c.cred.Account {
			continue
		}
		for _, g := range k.Grants {
			if g.RetiringPrincipal == in.RetiringPrincipal {
				sel = append(sel, s.listEntry(k, g))
			}
		}
	}
	c.audit.reason = "ListRetirableGrants lists the caller's account"
	return pageGrants(in.Limit, in.Marker, sel)
}

var errGrantGone = errors.New("kms: grant not found")

// removeGrant deletes a grant after may accepted it (under the store's
// lock).
func (s *Server) removeGrant(c *call, k store.Key, grantID string, may func(g store.Grant) error) error {
	_, err := s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		i := slices.IndexFunc(k.Grants, func(g store.Grant) bool { return g.ID == grantID })
		if i < 0 {
			return errGrantGone
		}
		if err := may(k.Grants[i]); err != nil {
			return err
		}
		k.Grants = slices.Delete(k.Grants, i, i+1)
		return nil
	})
	if errors.Is(err, errGrantGone) {
		return apiErr(CodeNotFound, "Grant %s does not exist on %s", grantID, k.ARN)
	}
	return err
}

func (s *Server) retireGrant(c *call) (any, error) {
	var in retireGrantInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	keyID, grantID := in.KeyID, in.GrantID
	switch {
	case in.GrantToken != "":
		kid, gid, ok := parseGrantToken(in.GrantToken)
		if !ok {
			return nil, apiErr(CodeInvalidGrantToken, "The grant token is not valid.")
		}
		if grantID != "" && grantID != gid {
			return nil, apiErr(CodeValidation, "GrantToken and GrantId name different grants")
		}
		if keyID == "" {
			keyID = kid
		}
		grantID = gid
	case keyID == "" || grantID == "":
		return nil, apiErr(CodeValidation, "give GrantToken, or KeyId and GrantId")
	}
	if !grantIDOK(grantID) {
		return nil, apiErr(CodeInvalidGrantID, "The grant ID is not valid.")
	}
	k, err := s.resolveKey(c, keyID)
	if err != nil {
		return nil, err
	}
	c.audit.reason = "RetireGrant is decided by the grant"
	err = s.removeGrant(c, k, grantID, func(g store.Grant) error {
		me, acct := c.cred.PrincipalARN, c.cred.Account
		if (g.RetiringPrincipal != "" && policy.PrincipalMatches(g.RetiringPrincipal, me, acct)) ||
			(slices.Contains(g.Operations, "RetireGrant") && policy.PrincipalMatches(g.GranteePrincipal, me, acct)) {
			if in.DryRun {
				return dryRun()
			}
			return nil
		}
		return apiErr(CodeAccessDenied, "User: %s is not authorized to perform: kms:RetireGrant on resource: %s: it is neither the grant's retiring principal nor a grantee allowed RetireGrant", me, k.ARN)
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) revokeGrant(c *call) (any, error) {
	var in revokeGrantInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.GrantID == "" {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value null at 'grantId' failed to satisfy constraint: Member must not be null")
	}
	if !grantIDOK(in.GrantID) {
		return nil, apiErr(CodeInvalidGrantID, "The grant ID is not valid.")
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:RevokeGrant")
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	if err := s.removeGrant(c, k, in.GrantID, func(store.Grant) error { return nil }); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
