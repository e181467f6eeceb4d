package kms

import (
	"time"

	"github.com/cloister/cloister/kms/store"
)

// Key deletion operations.

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
	k, err := s.authorizedKey(c, in.KeyID, "kms:ScheduleKeyDeletion")
	if err != nil {
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
