package kms

import (
	"encoding/base64"
	"sort"

	"github.com/google/uuid"

	"github.com/cloister/cloister/kms/policy"
	"github.com/cloister/cloister/kms/store"
)

// Key management operations: CreateKey, DescribeKey, Enable/DisableKey, ListKeys.

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

// authorizedKey resolves keyID (an id, ARN or alias) and checks that the
// caller may perform action on it, with no encryption context or
// attestation involved.
func (s *Server) authorizedKey(c *call, keyID, action string) (store.Key, error) {
	k, err := s.resolveKey(c, keyID)
	if err != nil {
		return store.Key{}, err
	}
	if err := s.authorize(c, k, action, nil, nil); err != nil {
		return store.Key{}, err
	}
	return k, nil
}

func (s *Server) keyOp(c *call, action string) (store.Key, error) {
	var in keyIDInput
	if err := decode(c.body, &in); err != nil {
		return store.Key{}, err
	}
	return s.authorizedKey(c, in.KeyID, action)
}

func (s *Server) describeKey(c *call) (any, error) {
	var in keyIDTokensInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if err := s.checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:DescribeKey")
	if err != nil {
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
