package kms

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/cloister/cloister/kms/store"
)

const maxTags = 50

// validTags checks tags as AWS does: keys 1-128 and values 0-256
// characters, no key starting with "aws:" (TagException), no key twice,
// at most 50.
func validTags(tags []Tag) ([]Tag, error) {
	if len(tags) > maxTags {
		return nil, apiErr(CodeTag, "A KMS key can have at most %d tags", maxTags)
	}
	seen := map[string]bool{}
	for _, t := range tags {
		if n := utf8.RuneCountInString(t.TagKey); n < 1 || n > 128 {
			return nil, apiErr(CodeValidation, "1 validation error detected: Value at 'tags.member.tagKey' failed to satisfy constraint: Member must have length between 1 and 128")
		}
		if utf8.RuneCountInString(t.TagValue) > 256 {
			return nil, apiErr(CodeValidation, "1 validation error detected: Value at 'tags.member.tagValue' failed to satisfy constraint: Member must have length less than or equal to 256")
		}
		if strings.HasPrefix(strings.ToLower(t.TagKey), "aws:") {
			return nil, apiErr(CodeTag, "Tag key %q begins with aws:, which is reserved for AWS", t.TagKey)
		}
		if seen[t.TagKey] {
			return nil, apiErr(CodeTag, "Tag key %q appears twice", t.TagKey)
		}
		seen[t.TagKey] = true
	}
	return tags, nil
}

func (s *Server) tagResource(c *call) (any, error) {
	var in tagResourceInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if len(in.Tags) == 0 {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value null at 'tags' failed to satisfy constraint: Member must not be null")
	}
	if _, err := validTags(in.Tags); err != nil {
		return nil, err
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:TagResource")
	if err != nil {
		return nil, err
	}
	_, err = s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		if k.State == store.PendingDeletion {
			return apiErr(CodeInvalidState, "%s is pending deletion.", k.ARN)
		}
		next := maps.Clone(k.Tags)
		if next == nil {
			next = map[string]string{}
		}
		for _, t := range in.Tags {
			next[t.TagKey] = t.TagValue
		}
		if len(next) > maxTags {
			return apiErr(CodeTag, "A KMS key can have at most %d tags", maxTags)
		}
		k.Tags = next
		return nil
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) untagResource(c *call) (any, error) {
	var in untagResourceInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if len(in.TagKeys) == 0 {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: Member must not be null")
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:UntagResource")
	if err != nil {
		return nil, err
	}
	_, err = s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		if k.State == store.PendingDeletion {
			return apiErr(CodeInvalidState, "%s is pending deletion.", k.ARN)
		}
		for _, t := range in.TagKeys {
			delete(k.Tags, t)
		}
		if len(k.Tags) == 0 {
			k.Tags = nil
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) listResourceTags(c *call) (any, error) {
	var in listInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:ListResourceTags")
	if err != nil {
		return nil, err
	}
	keys := slices.Sorted(maps.Keys(k.Tags))
	start, end, next, err := page(in.Limit, in.Marker, keys)
	if err != nil {
		return nil, err
	}
	out := listResourceTagsOutput{Tags: []Tag{}, NextMarker: next, Truncated: next != ""}
	for _, t := range keys[start:end] {
		out.Tags = append(out.Tags, Tag{TagKey: t, TagValue: k.Tags[t]})
	}
	return out, nil
}

func (s *Server) updateKeyDescription(c *call) (any, error) {
	var in updateKeyDescriptionInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.Description == nil {
		return nil, apiErr(CodeValidation, "1 validation error detected: Value null at 'description' failed to satisfy constraint: Member must not be null")
	}
	if len(*in.Description) > 8192 {
		return nil, apiErr(CodeValidation, "Description is longer than 8192 characters")
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:UpdateKeyDescription")
	if err != nil {
		return nil, err
	}
	_, err = s.cfg.Store.UpdateKey(c.ctx, k.ID, func(k *store.Key) error {
		if k.State == store.PendingDeletion {
			return apiErr(CodeInvalidState, "%s is pending deletion.", k.ARN)
		}
		k.Description = *in.Description
		return nil
	})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// keyKind is what UpdateAlias requires two keys to share: symmetric,
// asymmetric or HMAC, and the key usage.
func keyKind(k store.Key) string {
	kind := "asymmetric"
	switch {
	case k.KeySpec == symmetricDefault:
		kind = "symmetric"
	case strings.HasPrefix(k.KeySpec, "HMAC_"):
		kind = "HMAC"
	}
	return kind + " " + k.KeyUsage
}

// updateAlias points an alias at another key of the same kind and usage,
// as AWS requires; the caller needs kms:UpdateAlias on both keys.
func (s *Server) updateAlias(c *call) (any, error) {
	in, err := aliasRequest(c)
	if err != nil {
		return nil, err
	}
	old, err := s.resolveKey(c, in.AliasName)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, old, "kms:UpdateAlias", nil, nil); err != nil {
		return nil, err
	}
	k, err := s.resolveKey(c, in.TargetKeyID)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(c, k, "kms:UpdateAlias", nil, nil); err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	if k.Account != c.cred.Account {
		return nil, apiErr(CodeValidation, "an alias must be in the same account as its key")
	}
	c.audit.keyID = old.ARN + " -> " + k.ARN
	if keyKind(old) != keyKind(k) {
		return nil, apiErr(CodeValidation, "Alias %s points to a %s key; it cannot be moved to %s, a %s key: both must be the same type with the same key usage", in.AliasName, keyKind(old), k.ARN, keyKind(k))
	}
	errMoved := errors.New("moved")
	err = s.cfg.Store.UpdateAlias(c.ctx, aliasKey(c.cred.Account, in.AliasName), k.ID, s.now(), func(cur string) error {
		if cur != old.ID {
			return errMoved
		}
		return nil
	})
	switch {
	case errors.Is(err, errMoved):
		return nil, apiErr(CodeInvalidState, "Alias %s was changed by another request; retry", in.AliasName)
	case errors.Is(err, store.ErrNotFound):
		return nil, apiErr(CodeNotFound, "Alias %s is not found.", s.aliasArn(c.cred.Account, in.AliasName))
	case err != nil:
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) listKeyPolicies(c *call) (any, error) {
	var in listInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if _, err := s.authorizedKey(c, in.KeyID, "kms:ListKeyPolicies"); err != nil {
		return nil, err
	}
	start, end, next, err := page(in.Limit, in.Marker, []string{"default"})
	if err != nil {
		return nil, err
	}
	return listKeyPoliciesOutput{PolicyNames: append([]string{}, []string{"default"}[start:end]...), NextMarker: next, Truncated: next != ""}, nil
}

func (s *Server) listKeyRotations(c *call) (any, error) {
	var in listKeyRotationsInput
	if err := decode(c.body, &in); err != nil {
		return nil, err
	}
	if in.IncludeKeyMaterial != "" {
		if err := checkEnum("includeKeyMaterial", in.IncludeKeyMaterial, []string{"ALL_KEY_MATERIAL", "ROTATIONS_ONLY"}); err != nil {
			return nil, err
		}
	}
	k, err := s.authorizedKey(c, in.KeyID, "kms:ListKeyRotations")
	if err != nil {
		return nil, err
	}
	if err := rotatable(k); err != nil {
		return nil, err
	}
	order := make([]string, len(k.Rotations))
	for i, r := range k.Rotations {
		order[i] = fmt.Sprintf("%010d", r.Version)
	}
	start, end, next, err := page(in.Limit, in.Marker, order)
	if err != nil {
		return nil, err
	}
	out := listKeyRotationsOutput{Rotations: []rotationEntry{}, NextMarker: next, Truncated: next != ""}
	for _, r := range k.Rotations[start:end] {
		typ := "AUTOMATIC"
		if r.OnDemand {
			typ = "ON_DEMAND"
		}
		out.Rotations = append(out.Rotations, rotationEntry{KeyID: k.ARN, RotationDate: epoch(r.CreatedAt), RotationType: typ})
	}
	return out, nil
}
