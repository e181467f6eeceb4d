package sigv4

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// DefaultAccount is the account of a credential that names neither a
// principal_arn nor an aws_account_id (the account AWS uses in its
// documentation examples).
const DefaultAccount = "111122223333"

// ErrCredentialsFile is wrapped by errors about a malformed credentials file.
var ErrCredentialsFile = errors.New("sigv4: invalid credentials file")

// Credential is one access key the service accepts and who it stands for.
type Credential struct {
	// Profile is the section name in the credentials file.
	Profile         string
	AccessKeyID     string
	SecretAccessKey string
	// PrincipalARN is the identity policies see: principal_arn when given,
	// else arn:aws:iam::<Account>:user/<Profile>.
	PrincipalARN string
	// Account is the 12-digit account: from principal_arn, else
	// aws_account_id, else DefaultAccount.
	Account string
}

// Credentials is an immutable set of credentials indexed by access key id.
type Credentials struct {
	byKey map[string]Credential
}

var (
	accountRE = regexp.MustCompile(`^[0-9]{12}$`)
	arnRE     = regexp.MustCompile(`^arn:aws[a-z-]*:(iam|sts)::([0-9]{12}):[A-Za-z0-9+=,.@_/\-]+$`)
)

// NewCredentials validates and indexes creds: non-empty access key id and
// secret, unique access key ids, a well-formed principal ARN (IAM or STS,
// 12-digit account) and account; PrincipalARN and Account are filled in as
// documented on Credential when empty.
func NewCredentials(creds ...Credential) (*Credentials, error) {
	c := &Credentials{byKey: make(map[string]Credential, len(creds))}
	for _, cr := range creds {
		if cr.AccessKeyID == "" || cr.SecretAccessKey == "" {
			return nil, fmt.Errorf("%w: profile %q: aws_access_key_id and aws_secret_access_key are required", ErrCredentialsFile, cr.Profile)
		}
		if _, dup := c.byKey[cr.AccessKeyID]; dup {
			return nil, fmt.Errorf("%w: access key id %q appears twice", ErrCredentialsFile, cr.AccessKeyID)
		}
		if cr.PrincipalARN != "" {
			m := arnRE.FindStringSubmatch(cr.PrincipalARN)
			if m == nil {
				return nil, fmt.Errorf("%w: profile %q: principal_arn %q is not an IAM/STS ARN like arn:aws:iam::111122223333:role/name", ErrCredentialsFile, cr.Profile, cr.PrincipalARN)
			}
			if cr.Account != "" && cr.Account != m[2] {
				return nil, fmt.Errorf("%w: profile %q: aws_account_id %s disagrees with principal_arn", ErrCredentialsFile, cr.Profile, cr.Account)
			}
			cr.Account = m[2]
		}
		if cr.Account == "" {
			cr.Account = DefaultAccount
		}
		if !accountRE.MatchString(cr.Account) {
			return nil, fmt.Errorf("%w: profile %q: account %q is not 12 digits", ErrCredentialsFile, cr.Profile, cr.Account)
		}
		if cr.PrincipalARN == "" {
			name := cr.Profile
			if name == "" {
				name = "default"
			}
			cr.PrincipalARN = "arn:aws:iam::" + cr.Account + ":user/" + name
		}
		c.byKey[cr.AccessKeyID] = cr
	}
	return c, nil
}

// Lookup returns the credential with the given access key id.
func (c *Credentials) Lookup(accessKeyID string) (Credential, bool) {
	if c == nil {
		return Credential{}, false
	}
	cr, ok := c.byKey[accessKeyID]
	return cr, ok
}

// Len returns the number of credentials.
func (c *Credentials) Len() int {
	if c == nil {
		return 0
	}
	return len(c.byKey)
}

// LoadCredentialsFile reads an AWS shared-credentials file (see
// ParseCredentials).
func LoadCredentialsFile(path string) (*Credentials, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sigv4: opening credentials file: %w", err)
	}
	defer f.Close()
	c, err := ParseCredentials(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseCredentials parses the AWS shared-credentials format: "[profile]"
// sections of "key = value" lines, '#' and ';' comment lines. Recognised
// keys: aws_access_key_id, aws_secret_access_key, aws_session_token
// (ignored), aws_account_id, and the Cloister extension principal_arn.
// Unknown keys are ignored (the AWS CLI's files carry more); a section
// without both aws_access_key_id and aws_secret_access_key is an error, as
// is an empty file.
func ParseCredentials(r io.Reader) (*Credentials, error) {
	var (
		list []Credential
		cur  *Credential
	)
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || s[0] == '#' || s[0] == ';' {
			continue
		}
		if s[0] == '[' {
			if !strings.HasSuffix(s, "]") {
				return nil, fmt.Errorf("%w: line %d: unterminated section header", ErrCredentialsFile, line)
			}
			name := strings.TrimSpace(s[1 : len(s)-1])
			name = strings.TrimSpace(strings.TrimPrefix(name, "profile "))
			if name == "" {
				return nil, fmt.Errorf("%w: line %d: empty profile name", ErrCredentialsFile, line)
			}
			list = append(list, Credential{Profile: name})
			cur = &list[len(list)-1]
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("%w: line %d: expected key = value", ErrCredentialsFile, line)
		}
		if cur == nil {
			return nil, fmt.Errorf("%w: line %d: key outside a [profile] section", ErrCredentialsFile, line)
		}
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		switch k {
		case "aws_access_key_id":
			cur.AccessKeyID = v
		case "aws_secret_access_key":
			cur.SecretAccessKey = v
		case "aws_account_id":
			cur.Account = v
		case "principal_arn":
			cur.PrincipalARN = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCredentialsFile, err)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("%w: no [profile] section", ErrCredentialsFile)
	}
	return NewCredentials(list...)
}

// ByProfile returns the credential of the named profile.
func (c *Credentials) ByProfile(profile string) (Credential, bool) {
	if c == nil {
		return Credential{}, false
	}
	for _, cr := range c.byKey {
		if cr.Profile == profile {
			return cr, true
		}
	}
	return Credential{}, false
}
