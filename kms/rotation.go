package kms

import (
	"time"

	"github.com/cloister/cloister/kms/store"
)

// Key rotation operations.

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
	k, err := s.authorizedKey(c, in.KeyID, "kms:EnableKeyRotation")
	if err != nil {
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
