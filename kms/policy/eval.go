package policy

import (
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
)

// Condition keys the key service puts in a request context.
const (
	KeyImageSha384           = "kms:RecipientAttestation:ImageSha384"
	KeyPCRPrefix             = "kms:RecipientAttestation:PCR"
	KeyEncryptionContext     = "kms:EncryptionContext:"
	KeyEncryptionContextKeys = "kms:EncryptionContextKeys"
	KeyCallerAccount         = "kms:CallerAccount"
	KeyPrincipalArn          = "aws:PrincipalArn"
	KeyPrincipalAccount      = "aws:PrincipalAccount"
)

// Request is what a policy is evaluated against.
type Request struct {
	// PrincipalARN is the caller, e.g. arn:aws:iam::111122223333:role/app.
	PrincipalARN string
	// Account is the caller's account; derived from PrincipalARN when empty.
	Account string
	// Action is the full action name, e.g. "kms:Decrypt".
	Action string
	// Resource is the key ARN.
	Resource string
	// Context holds the request's condition keys and their values
	// (multi-valued keys have several). Keys are matched case-insensitively.
	// aws:PrincipalArn, aws:PrincipalAccount and kms:CallerAccount are added
	// from the fields above when absent.
	Context map[string][]string
}

// SetAttestation adds the attestation condition keys for a VERIFIED
// attestation document's PCRs: kms:RecipientAttestation:PCR<n> for each PCR
// and kms:RecipientAttestation:ImageSha384 = PCR0, as lower-case hex. Call it
// only after the document was verified: the keys' presence is what makes
// attestation conditions satisfiable.
func (r *Request) SetAttestation(pcrs map[int][]byte) {
	if r.Context == nil {
		r.Context = map[string][]string{}
	}
	for i, v := range pcrs {
		r.Context[fmt.Sprintf("%s%d", KeyPCRPrefix, i)] = []string{hex.EncodeToString(v)}
		if i == 0 {
			r.Context[KeyImageSha384] = []string{hex.EncodeToString(v)}
		}
	}
}

// SetEncryptionContext adds kms:EncryptionContext:<k> for every pair and
// kms:EncryptionContextKeys listing the keys. Condition keys match ignoring
// case, so ec must not hold two keys for which SameContextKey holds (the
// key service refuses such a context): which of their values a condition
// would see is undefined.
func (r *Request) SetEncryptionContext(ec map[string]string) {
	if r.Context == nil {
		r.Context = map[string][]string{}
	}
	keys := make([]string, 0, len(ec))
	for k, v := range ec {
		r.Context[KeyEncryptionContext+k] = []string{v}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 0 {
		r.Context[KeyEncryptionContextKeys] = keys
	}
}

// Decision is the outcome of an evaluation.
type Decision string

// Decisions, as in AWS's evaluation logic.
const (
	// Allowed: at least one Allow statement applies and no Deny applies.
	Allowed Decision = "Allow"
	// ImplicitDeny: no statement applies (default deny).
	ImplicitDeny Decision = "ImplicitDeny"
	// ExplicitDeny: a Deny statement applies (wins over any Allow).
	ExplicitDeny Decision = "ExplicitDeny"
)

// Explanation is the result of Explain: the decision and, per statement,
// why it applied or not.
type Explanation struct {
	Decision   Decision               `json:"decision"`
	Reason     string                 `json:"reason"`
	Statements []StatementExplanation `json:"statements"`
}

// StatementExplanation says whether one statement applies to the request.
type StatementExplanation struct {
	Index      int                    `json:"index"`
	Sid        string                 `json:"sid,omitempty"`
	Effect     Effect                 `json:"effect"`
	Applies    bool                   `json:"applies"`
	Principal  Match                  `json:"principal"`
	Action     Match                  `json:"action"`
	Resource   Match                  `json:"resource"`
	Conditions []ConditionExplanation `json:"conditions,omitempty"`
}

// Match is the outcome of matching one statement element.
type Match struct {
	Matched bool   `json:"matched"`
	Detail  string `json:"detail"`
}

// ConditionExplanation is the outcome of one condition.
type ConditionExplanation struct {
	Operator      string   `json:"operator"`
	Key           string   `json:"key"`
	Values        []string `json:"values"`
	Present       bool     `json:"present"`
	RequestValues []string `json:"request_values,omitempty"`
	Matched       bool     `json:"matched"`
}

// Evaluate applies AWS's policy evaluation logic: an applicable Deny
// statement gives ExplicitDeny; otherwise an applicable Allow gives Allowed;
// otherwise ImplicitDeny. A statement applies when its principal, action,
// resource and every condition match. A nil policy denies implicitly.
func (p *Policy) Evaluate(req Request) Decision {
	return p.Explain(req).Decision
}

// Explain is Evaluate with the reasoning: per statement, the outcome of the
// principal, action, resource and each condition, plus a one-line reason
// for the decision naming the deciding statement(s).
func (p *Policy) Explain(req Request) Explanation {
	ctx := normalise(req)
	ex := Explanation{Decision: ImplicitDeny, Statements: []StatementExplanation{}}
	var allows, denies []string
	if p != nil {
		for i, s := range p.Statements {
			se := explainStatement(i, s, req, ctx)
			ex.Statements = append(ex.Statements, se)
			if !se.Applies {
				continue
			}
			name := fmt.Sprintf("statement %d", i)
			if s.Sid != "" {
				name = fmt.Sprintf("statement %d (%q)", i, s.Sid)
			}
			if s.Effect == Deny {
				denies = append(denies, name)
			} else {
				allows = append(allows, name)
			}
		}
	}
	switch {
	case len(denies) > 0:
		ex.Decision = ExplicitDeny
		ex.Reason = "explicit deny by " + strings.Join(denies, ", ")
	case len(allows) > 0:
		ex.Decision = Allowed
		ex.Reason = "allowed by " + strings.Join(allows, ", ")
	default:
		ex.Decision = ImplicitDeny
		ex.Reason = "no statement allows " + req.Action + " for " + req.PrincipalARN
	}
	return ex
}

// normalise builds the lower-cased context with the principal keys added.
func normalise(req Request) map[string][]string {
	ctx := make(map[string][]string, len(req.Context)+3)
	for k, v := range req.Context {
		ctx[strings.ToLower(k)] = v
	}
	acct := accountOf(req)
	add := func(k, v string) {
		k = strings.ToLower(k)
		if _, ok := ctx[k]; !ok && v != "" {
			ctx[k] = []string{v}
		}
	}
	add(KeyPrincipalArn, req.PrincipalARN)
	add(KeyPrincipalAccount, acct)
	add(KeyCallerAccount, acct)
	return ctx
}

func accountOf(req Request) string {
	if req.Account != "" {
		return req.Account
	}
	parts := strings.SplitN(req.PrincipalARN, ":", 6)
	if len(parts) == 6 {
		return parts[4]
	}
	return ""
}

func explainStatement(i int, s Statement, req Request, ctx map[string][]string) StatementExplanation {
	se := StatementExplanation{Index: i, Sid: s.Sid, Effect: s.Effect}
	se.Principal = matchPrincipal(s.Principals, req)
	se.Action = matchAction(s, req.Action)
	se.Resource = matchList(s.Resources, req.Resource, false, "resource")
	allCond := true
	for _, c := range s.Conditions {
		ce := evalCondition(c, ctx)
		allCond = allCond && ce.Matched
		se.Conditions = append(se.Conditions, ce)
	}
	se.Applies = se.Principal.Matched && se.Action.Matched && se.Resource.Matched && allCond
	return se
}

func matchPrincipal(ps []string, req Request) Match {
	acct := accountOf(req)
	for _, p := range ps {
		switch {
		case p == "*":
			return Match{true, `principal "*" matches everyone`}
		case accountRE.MatchString(p) || (strings.HasPrefix(p, "arn:") && strings.HasSuffix(p, ":root")):
			a := p
			if !accountRE.MatchString(p) {
				parts := strings.SplitN(p, ":", 6)
				if len(parts) == 6 {
					a = parts[4]
				}
			}
			if a == acct && acct != "" {
				return Match{true, fmt.Sprintf("principal %q covers every principal of account %s", p, a)}
			}
		case p == req.PrincipalARN:
			return Match{true, fmt.Sprintf("principal %q is the caller", p)}
		case roleOfSession(req.PrincipalARN) != "" && sameRole(p, req.PrincipalARN):
			return Match{true, fmt.Sprintf("caller %q is a session of role %q", req.PrincipalARN, p)}
		}
	}
	return Match{false, fmt.Sprintf("caller %q is not among %q", req.PrincipalARN, ps)}
}

// roleOfSession returns "acct/role" for arn:aws:sts::acct:assumed-role/role/session.
func roleOfSession(arn string) string {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[2] != "sts" {
		return ""
	}
	rest, ok := strings.CutPrefix(parts[5], "assumed-role/")
	if !ok {
		return ""
	}
	role, _, ok := strings.Cut(rest, "/")
	if !ok {
		return ""
	}
	return parts[4] + "/" + role
}

// sameRole reports whether role ARN p (arn:aws:iam::acct:role/path/name) is
// the role of the assumed-role session ARN sess.
func sameRole(p, sess string) bool {
	parts := strings.SplitN(p, ":", 6)
	if len(parts) != 6 || parts[2] != "iam" || !strings.HasPrefix(parts[5], "role/") {
		return false
	}
	name := parts[5][strings.LastIndex(parts[5], "/")+1:]
	return roleOfSession(sess) == parts[4]+"/"+name
}

func matchAction(s Statement, action string) Match {
	if len(s.NotActions) > 0 {
		m := matchList(s.NotActions, action, true, "NotAction")
		if m.Matched {
			return Match{false, fmt.Sprintf("action %q is excluded by NotAction %q", action, s.NotActions)}
		}
		return Match{true, fmt.Sprintf("action %q is not in NotAction %q", action, s.NotActions)}
	}
	return matchList(s.Actions, action, true, "action")
}

func matchList(patterns []string, v string, fold bool, what string) Match {
	for _, p := range patterns {
		if glob(p, v, fold) {
			return Match{true, fmt.Sprintf("%s %q matches %q", what, v, p)}
		}
	}
	return Match{false, fmt.Sprintf("%s %q matches none of %q", what, v, patterns)}
}

// glob matches v against pattern with '*' (any run) and '?' (one
// character), in linear-ish time (greedy with one backtrack point).
func glob(pattern, v string, fold bool) bool {
	if fold {
		pattern, v = strings.ToLower(pattern), strings.ToLower(v)
	}
	p, s := 0, 0
	star, mark := -1, 0
	for s < len(v) {
		switch {
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == v[s]):
			p++
			s++
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, s
			p++
		case star >= 0:
			p = star + 1
			mark++
			s = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// evalCondition applies AWS's condition semantics:
//   - key absent: Null "true" holds; IfExists holds; ForAllValues holds;
//     negated operators (String/Arn Not*) hold; everything else fails;
//   - without qualifier: a positive operator holds when some request value
//     matches some policy value; a negated one when no request value
//     matches any policy value;
//   - ForAnyValue: some request value satisfies the operator;
//   - ForAllValues: every request value satisfies the operator.
func evalCondition(c Condition, ctx map[string][]string) ConditionExplanation {
	vals, present := ctx[strings.ToLower(c.Key)]
	present = present && len(vals) > 0
	ce := ConditionExplanation{Operator: c.Operator, Key: c.Key, Values: c.Values, Present: present, RequestValues: vals}
	negated := operators[c.base]
	if c.base == "Null" {
		wantAbsent := strings.EqualFold(c.Values[0], "true")
		ce.Matched = wantAbsent != present
		return ce
	}
	if !present {
		ce.Matched = c.ifExists || c.qualifier == "ForAllValues" || (negated && c.qualifier == "")
		return ce
	}
	m := func(rv string) bool { // positive-sense match of one request value
		for _, pv := range c.Values {
			if matchValue(c.base, pv, rv) {
				return true
			}
		}
		return false
	}
	pred := func(rv string) bool { return m(rv) != negated }
	switch c.qualifier {
	case "ForAllValues":
		ce.Matched = true
		for _, rv := range vals {
			if !pred(rv) {
				ce.Matched = false
				break
			}
		}
	case "ForAnyValue":
		for _, rv := range vals {
			if pred(rv) {
				ce.Matched = true
				break
			}
		}
	default:
		found := false
		for _, rv := range vals {
			if m(rv) {
				found = true
				break
			}
		}
		ce.Matched = found != negated
	}
	return ce
}

func matchValue(base, pv, rv string) bool {
	switch base {
	case "StringEquals", "StringNotEquals", "ArnEquals", "ArnNotEquals":
		if strings.HasPrefix(base, "Arn") {
			return glob(pv, rv, false)
		}
		return pv == rv
	case "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase":
		return strings.EqualFold(pv, rv)
	case "StringLike", "StringNotLike", "ArnLike", "ArnNotLike":
		return glob(pv, rv, false)
	case "Bool":
		return strings.EqualFold(pv, rv)
	}
	return false
}

// SameContextKey reports whether encryption-context keys a and b name the
// same condition key kms:EncryptionContext:<key>. Condition key names match
// ignoring case (as on AWS): here after strings.ToLower, and keys equal
// under Unicode case folding (strings.EqualFold) count as the same too.
func SameContextKey(a, b string) bool {
	// Neither test implies the other: "İd" and "id" lower-case alike but
	// do not fold alike.
	lowerA, lowerB := strings.ToLower(a), strings.ToLower(b)
	return lowerA == lowerB || strings.EqualFold(a, b)
}

// PrincipalMatches reports whether principal pattern p (as written in a
// policy's Principal or a grant's GranteePrincipal: "*", an account id, an
// account root ARN, a user or role ARN) covers the caller principalARN of
// account (derived from principalARN when empty); a role ARN covers its
// assumed-role sessions.
func PrincipalMatches(p, principalARN, account string) bool {
	return matchPrincipal([]string{p}, Request{PrincipalARN: principalARN, Account: account}).Matched
}
