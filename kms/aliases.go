package kms

import (
	"errors"
	"strings"

	"github.com/cloister/cloister/kms/store"
)

// Alias operations.

func validAliasName(name string) error {
	if !aliasNameOK(name) {
		return apiErr(CodeValidation, "Alias %q must be alias/ followed by 1-250 characters of [a-zA-Z0-9/_-]", name)
	}
	if strings.HasPrefix(name, "alias/aws/") {
		return apiErr(CodeInvalidAliasName, "Alias %s cannot begin with alias/aws/, which is reserved for AWS managed keys", name)
	}
	return nil
}

// aliasRequest decodes a CreateAlias or UpdateAlias request and checks
// its alias name and target, which must name a key, not another alias.
func aliasRequest(c *call) (createAliasInput, error) {
	var in createAliasInput
	if err := decode(c.body, &in); err != nil {
		return in, err
	}
	if err := validAliasName(in.AliasName); err != nil {
		return in, err
	}
	if strings.HasPrefix(in.TargetKeyID, "alias/") || strings.Contains(in.TargetKeyID, ":alias/") {
		return in, apiErr(CodeValidation, "TargetKeyId must be a key id or key ARN, not an alias")
	}
	return in, nil
}

func (s *Server) createAlias(c *call) (any, error) {
	in, err := aliasRequest(c)
	if err != nil {
		return nil, err
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
