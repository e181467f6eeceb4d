package kms

import (
	"github.com/cloister/cloister/kms/store"
)

// Key policy operations.

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
	k, err := s.authorizedKey(c, in.KeyID, "kms:GetKeyPolicy")
	if err != nil {
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
	k, err := s.authorizedKey(c, in.KeyID, "kms:PutKeyPolicy")
	if err != nil {
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
