package kms

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cloister/cloister/kms/policy"
	"github.com/cloister/cloister/kms/store"
)

// CloisterExplain and the explanations of denials.

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
