package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/cloister/cloister/internal/jsonx"
)

// ErrMalformed is wrapped by every error Parse returns: the document is not a
// valid key policy. The key service maps it to
// MalformedPolicyDocumentException.
var ErrMalformed = errors.New("policy: malformed policy document")

// MaxSize is the largest policy document accepted (AWS KMS's limit on a key
// policy, 32 KiB).
const MaxSize = 32 * 1024

// Limits on the parsed structure (far above what AWS allows in 32 KiB).
const (
	maxStatements = 256
	maxValues     = 1024
)

// Effect is a statement's effect.
type Effect string

// Effects.
const (
	Allow Effect = "Allow"
	Deny  Effect = "Deny"
)

// Policy is a parsed and validated key policy. Only Parse constructs a valid
// one; the zero value denies everything.
type Policy struct {
	// Version is "2012-10-17" or "2008-10-17" ("" when absent).
	Version string
	// ID is the optional top-level Id.
	ID string
	// Statements in document order.
	Statements []Statement
}

// Statement is one policy statement.
type Statement struct {
	Sid    string
	Effect Effect
	// Principals are the "AWS" principal values: "*", an account id, or
	// an ARN (account root, user, role, assumed-role).
	Principals []string
	// Actions or NotActions (exactly one is non-empty): patterns like
	// "kms:Decrypt", "kms:Generate*", "kms:*", "*".
	Actions    []string
	NotActions []string
	// Resources: "*" or key ARN patterns.
	Resources []string
	// Conditions: every one must hold.
	Conditions []Condition
}

// Condition is one (operator, key, values) triple of a Condition block.
type Condition struct {
	// Operator is the operator as written, e.g. "ForAnyValue:StringEqualsIgnoreCase".
	Operator string
	// Key is the condition key as written, e.g. "kms:RecipientAttestation:PCR0".
	Key string
	// Values are the policy values (booleans and numbers in their JSON text).
	Values []string

	base      string // operator without qualifier and IfExists, e.g. "StringEquals"
	qualifier string // "", "ForAnyValue", "ForAllValues"
	ifExists  bool
}

// operators maps each supported base operator to whether it is negated.
var operators = map[string]bool{
	"StringEquals":              false,
	"StringNotEquals":           true,
	"StringEqualsIgnoreCase":    false,
	"StringNotEqualsIgnoreCase": true,
	"StringLike":                false,
	"StringNotLike":             true,
	"ArnEquals":                 false,
	"ArnNotEquals":              true,
	"ArnLike":                   false,
	"ArnNotLike":                true,
	"Bool":                      false,
	"Null":                      false,
}

var (
	accountRE   = regexp.MustCompile(`^[0-9]{12}$`)
	conditionRE = regexp.MustCompile(`^[A-Za-z0-9]+:[A-Za-z0-9_.\-/:*]+$`)
	pcrKeyRE    = regexp.MustCompile(`(?i)^kms:RecipientAttestation:PCR([0-9]+)$`)
)

// rawPolicy and rawStatement mirror the JSON grammar with polymorphic fields
// left raw.
type rawPolicy struct {
	Version   string          `json:"Version"`
	ID        string          `json:"Id"`
	Statement json.RawMessage `json:"Statement"`
}

type rawStatement struct {
	Sid          string                                `json:"Sid"`
	Effect       string                                `json:"Effect"`
	Principal    json.RawMessage                       `json:"Principal"`
	NotPrincipal json.RawMessage                       `json:"NotPrincipal"`
	Action       json.RawMessage                       `json:"Action"`
	NotAction    json.RawMessage                       `json:"NotAction"`
	Resource     json.RawMessage                       `json:"Resource"`
	NotResource  json.RawMessage                       `json:"NotResource"`
	Condition    map[string]map[string]json.RawMessage `json:"Condition"`
}

// Parse decodes and validates a key policy document. It checks: size ≤
// MaxSize; strict JSON (internal/jsonx): exactly one value, valid UTF-8, and
// no object anywhere in the document with two members whose names are
// equal or differ only in case (so no reader can see a different document
// than the one enforced); a JSON object with only Version, Id and Statement
// (unknown members rejected, member names matched case-sensitively);
// Version absent, "2012-10-17" or "2008-10-17"; Statement an
// object or a non-empty array; per statement: only the known fields, Sid
// unique when present, Effect "Allow" or "Deny", Principal present as "*" or
// {"AWS": "*"|account|ARN|[...]} (NotPrincipal and NotResource are
// rejected as unsupported), exactly one of Action/NotAction with "*" or
// "kms:<pattern>" entries, Resource present ("*" or ARN patterns),
// Condition operators among the supported set (String*, Arn*, Bool, Null,
// each optionally with ForAnyValue:/ForAllValues: and IfExists), condition
// keys shaped "prefix:name" with PCR indexes 0..31, Bool and Null values
// "true"/"false". Every error wraps ErrMalformed and names the statement.
func Parse(doc []byte) (*Policy, error) {
	if len(doc) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds the %d-byte limit", ErrMalformed, len(doc), MaxSize)
	}
	if err := jsonx.Check(doc, strictJSON); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var raw rawPolicy
	if err := strictUnmarshal(doc, &raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	switch raw.Version {
	case "", "2012-10-17", "2008-10-17":
	default:
		return nil, fmt.Errorf("%w: Version %q is not 2012-10-17 or 2008-10-17", ErrMalformed, raw.Version)
	}
	p := &Policy{Version: raw.Version, ID: raw.ID}
	var stmts []json.RawMessage
	switch firstByte(raw.Statement) {
	case '[':
		if err := json.Unmarshal(raw.Statement, &stmts); err != nil {
			return nil, fmt.Errorf("%w: Statement: %v", ErrMalformed, err)
		}
	case '{':
		stmts = []json.RawMessage{raw.Statement}
	default:
		return nil, fmt.Errorf("%w: Statement is missing or not an object or array", ErrMalformed)
	}
	if len(stmts) == 0 {
		return nil, fmt.Errorf("%w: Statement is empty", ErrMalformed)
	}
	if len(stmts) > maxStatements {
		return nil, fmt.Errorf("%w: more than %d statements", ErrMalformed, maxStatements)
	}
	sids := map[string]bool{}
	for i, rs := range stmts {
		s, err := parseStatement(rs)
		if err != nil {
			name := fmt.Sprintf("statement %d", i)
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, name, err)
		}
		if s.Sid != "" {
			if sids[s.Sid] {
				return nil, fmt.Errorf("%w: statement %d: duplicate Sid %q", ErrMalformed, i, s.Sid)
			}
			sids[s.Sid] = true
		}
		p.Statements = append(p.Statements, s)
	}
	return p, nil
}

func firstByte(b []byte) byte {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// strictJSON is how policy documents are decoded: besides jsonx's checks,
// two members of one object may not differ only in case, and every member
// of Policy and Statement objects must be a known element, spelled exactly.
var strictJSON = jsonx.Options{FoldedNames: true, DisallowUnknownFields: true}

func strictUnmarshal(b []byte, v any) error {
	return jsonx.Unmarshal(b, v, strictJSON)
}

func parseStatement(b []byte) (Statement, error) {
	var rs rawStatement
	if err := strictUnmarshal(b, &rs); err != nil {
		return Statement{}, err
	}
	s := Statement{Sid: rs.Sid}
	switch rs.Effect {
	case "Allow":
		s.Effect = Allow
	case "Deny":
		s.Effect = Deny
	case "":
		return s, errors.New("the Effect element is missing")
	default:
		return s, fmt.Errorf("Effect %q is not Allow or Deny", rs.Effect)
	}
	if rs.NotPrincipal != nil {
		return s, errors.New("NotPrincipal is not supported in key policies")
	}
	if rs.NotResource != nil {
		return s, errors.New("NotResource is not supported in key policies")
	}
	var err error
	if s.Principals, err = parsePrincipal(rs.Principal); err != nil {
		return s, err
	}
	switch {
	case rs.Action != nil && rs.NotAction != nil:
		return s, errors.New("the Action and NotAction elements are mutually exclusive")
	case rs.Action != nil:
		s.Actions, err = stringOrList(rs.Action, "Action")
	case rs.NotAction != nil:
		s.NotActions, err = stringOrList(rs.NotAction, "NotAction")
	default:
		return s, errors.New("the Action element is missing")
	}
	if err != nil {
		return s, err
	}
	for _, a := range append(append([]string{}, s.Actions...), s.NotActions...) {
		if a != "*" && !strings.HasPrefix(strings.ToLower(a), "kms:") {
			return s, fmt.Errorf("action %q is not \"*\" or kms:<action>", a)
		}
		if len(a) <= len("kms:") && a != "*" {
			return s, fmt.Errorf("action %q names no action", a)
		}
	}
	if rs.Resource == nil {
		return s, errors.New("the Resource element is missing")
	}
	if s.Resources, err = stringOrList(rs.Resource, "Resource"); err != nil {
		return s, err
	}
	for _, r := range s.Resources {
		if r != "*" && !strings.HasPrefix(r, "arn:") {
			return s, fmt.Errorf("resource %q is not \"*\" or an ARN", r)
		}
	}
	ops := make([]string, 0, len(rs.Condition))
	for op := range rs.Condition {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, op := range ops {
		keys := make([]string, 0, len(rs.Condition[op]))
		for k := range rs.Condition[op] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			c, err := parseCondition(op, k, rs.Condition[op][k])
			if err != nil {
				return s, err
			}
			s.Conditions = append(s.Conditions, c)
		}
	}
	return s, nil
}

func parsePrincipal(b json.RawMessage) ([]string, error) {
	if b == nil {
		return nil, errors.New("the Principal element is missing (key policies require one)")
	}
	var star string
	if json.Unmarshal(b, &star) == nil {
		if star != "*" {
			return nil, fmt.Errorf("principal %q: a string principal must be \"*\"", star)
		}
		return []string{"*"}, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, errors.New("the Principal element must be \"*\" or an object")
	}
	var out []string
	for typ, v := range m {
		if typ != "AWS" {
			return nil, fmt.Errorf("principal type %q is not supported (only AWS)", typ)
		}
		vals, err := stringOrList(v, "Principal AWS")
		if err != nil {
			return nil, err
		}
		for _, p := range vals {
			if p != "*" && !accountRE.MatchString(p) && !strings.HasPrefix(p, "arn:") {
				return nil, fmt.Errorf("principal %q is not \"*\", a 12-digit account id or an ARN", p)
			}
			if strings.HasPrefix(p, "arn:") && strings.ContainsAny(p, "*?") {
				return nil, fmt.Errorf("principal %q: wildcards are not allowed in principal ARNs", p)
			}
		}
		out = append(out, vals...)
	}
	if len(out) == 0 {
		return nil, errors.New("the Principal element names no principal")
	}
	return out, nil
}

// stringOrList decodes a JSON string or a non-empty array of strings.
func stringOrList(b json.RawMessage, what string) ([]string, error) {
	var one string
	if json.Unmarshal(b, &one) == nil {
		if one == "" {
			return nil, fmt.Errorf("%s is empty", what)
		}
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return nil, fmt.Errorf("%s must be a string or an array of strings", what)
	}
	if len(many) == 0 {
		return nil, fmt.Errorf("%s is an empty array", what)
	}
	if len(many) > maxValues {
		return nil, fmt.Errorf("%s has more than %d entries", what, maxValues)
	}
	for _, s := range many {
		if s == "" {
			return nil, fmt.Errorf("%s has an empty entry", what)
		}
	}
	return many, nil
}

// conditionValues decodes a condition value: a string, bool or number, or an
// array of them.
func conditionValues(b json.RawMessage) ([]string, error) {
	scalar := func(r json.RawMessage) (string, bool) {
		var s string
		if json.Unmarshal(r, &s) == nil {
			return s, true
		}
		var bo bool
		if json.Unmarshal(r, &bo) == nil {
			return strconv.FormatBool(bo), true
		}
		var n json.Number
		if json.Unmarshal(r, &n) == nil {
			return n.String(), true
		}
		return "", false
	}
	if s, ok := scalar(b); ok {
		return []string{s}, nil
	}
	var arr []json.RawMessage
	if err := json.Unmarshal(b, &arr); err != nil {
		return nil, errors.New("condition value must be a string, boolean, number or an array of them")
	}
	if len(arr) == 0 || len(arr) > maxValues {
		return nil, fmt.Errorf("condition value array must have 1..%d entries", maxValues)
	}
	out := make([]string, 0, len(arr))
	for _, r := range arr {
		s, ok := scalar(r)
		if !ok {
			return nil, errors.New("condition value array entries must be strings, booleans or numbers")
		}
		out = append(out, s)
	}
	return out, nil
}

func parseCondition(op, key string, val json.RawMessage) (Condition, error) {
	c := Condition{Operator: op, Key: key}
	base := op
	if q, rest, ok := strings.Cut(base, ":"); ok {
		if q != "ForAnyValue" && q != "ForAllValues" {
			return c, fmt.Errorf("condition operator %q: unknown qualifier %q (want ForAnyValue or ForAllValues)", op, q)
		}
		c.qualifier, base = q, rest
	}
	if b, ok := strings.CutSuffix(base, "IfExists"); ok && b != "" {
		c.ifExists, base = true, b
	}
	if _, ok := operators[base]; !ok {
		return c, fmt.Errorf("condition operator %q is not supported (supported: String*, Arn*, Bool, Null with optional ForAnyValue:/ForAllValues: and IfExists)", op)
	}
	if base == "Null" && (c.ifExists || c.qualifier != "") {
		return c, fmt.Errorf("condition operator %q: Null takes no qualifier or IfExists", op)
	}
	c.base = base
	if !conditionRE.MatchString(key) {
		return c, fmt.Errorf("condition key %q is not of the form prefix:name", key)
	}
	if m := pcrKeyRE.FindStringSubmatch(key); m != nil {
		n, err := strconv.Atoi(m[1])
		if err != nil || n > 31 {
			return c, fmt.Errorf("condition key %q: PCR index must be 0..31", key)
		}
	}
	vals, err := conditionValues(val)
	if err != nil {
		return c, fmt.Errorf("condition %s %s: %v", op, key, err)
	}
	if base == "Bool" || base == "Null" {
		for _, v := range vals {
			if !strings.EqualFold(v, "true") && !strings.EqualFold(v, "false") {
				return c, fmt.Errorf("condition %s %s: value %q is not true or false", op, key, v)
			}
		}
	}
	c.Values = vals
	return c, nil
}

// Default returns the key policy AWS KMS attaches when CreateKey is called
// without one: the account's root principal (every principal of the
// account) may use every kms action on the key.
func Default(account string) string {
	return `{
  "Version": "2012-10-17",
  "Id": "key-default-1",
  "Statement": [
    {
      "Sid": "Enable IAM User Permissions",
      "Effect": "Allow",
      "Principal": {"AWS": "arn:aws:iam::` + account + `:root"},
      "Action": "kms:*",
      "Resource": "*"
    }
  ]
}`
}
