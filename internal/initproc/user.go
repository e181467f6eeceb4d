package initproc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

var (
	// ErrUnknownUser means the user of a USER specification is neither a
	// name in the image's /etc/passwd nor a numeric uid.
	ErrUnknownUser = errors.New("initproc: unknown user")
	// ErrUnknownGroup means the group of a USER specification is neither a
	// name in the image's /etc/group nor a numeric gid.
	ErrUnknownGroup = errors.New("initproc: unknown group")
)

// maxAccountFile caps /etc/passwd and /etc/group.
const maxAccountFile = 4 << 20

// Credential is the identity the application runs with.
type Credential struct {
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups, the primary GID first, no duplicates
	Name   string   // user name from /etc/passwd, "" when the uid has no entry
	Home   string   // home directory from /etc/passwd, "/" when unknown
}

type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// ResolveUser resolves a Docker USER specification against root/etc/passwd
// and root/etc/group (either may be absent):
//   - "" means uid 0 (with root's passwd entry when there is one);
//   - the user part is looked up as a name first, then taken as a numeric
//     uid (a uid without an entry gets gid 0 and home "/");
//   - without a group part the primary group comes from /etc/passwd and
//     the supplementary groups are every /etc/group entry listing the
//     user's name as a member;
//   - with a group part (a name first, then a numeric gid) that group is the
//     primary and only group.
//
// It fails with [ErrUnknownUser] or [ErrUnknownGroup] for a name that is not
// found, and with [ErrImageConfig] for an id that does not fit in 32 bits or
// equals 4294967295 (the kernel's "no change" value).
func ResolveUser(root, spec string) (Credential, error) {
	users, err := readPasswd(filepath.Join(root, "etc", "passwd"))
	if err != nil {
		return Credential{}, err
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" {
		if hasGroup {
			return Credential{}, fmt.Errorf("%w: user specification %q has a group but no user", ErrImageConfig, spec)
		}
		userPart = "0"
	}
	var c Credential
	if u, ok := findUser(users, userPart); ok {
		c = Credential{UID: u.uid, GID: u.gid, Name: u.name, Home: u.home}
	} else {
		id, err := parseID("user", userPart)
		if errors.Is(err, strconv.ErrSyntax) {
			return Credential{}, fmt.Errorf("%w: %q is not in the image's /etc/passwd and is not a numeric uid", ErrUnknownUser, userPart)
		}
		if err != nil {
			return Credential{}, err
		}
		c = Credential{UID: id, GID: 0, Home: "/"}
		if u, ok := findUID(users, id); ok {
			c.GID, c.Name, c.Home = u.gid, u.name, u.home
		}
	}
	if c.Home == "" {
		c.Home = "/"
	}
	groups, err := readGroup(filepath.Join(root, "etc", "group"))
	if err != nil {
		return Credential{}, err
	}
	if hasGroup {
		if groupPart == "" {
			return Credential{}, fmt.Errorf("%w: user specification %q has an empty group", ErrImageConfig, spec)
		}
		if g, ok := findGroup(groups, groupPart); ok {
			c.GID = g.gid
		} else {
			id, err := parseID("group", groupPart)
			if errors.Is(err, strconv.ErrSyntax) {
				return Credential{}, fmt.Errorf("%w: %q is not in the image's /etc/group and is not a numeric gid", ErrUnknownGroup, groupPart)
			}
			if err != nil {
				return Credential{}, err
			}
			c.GID = id
		}
		c.Groups = []uint32{c.GID}
		return c, nil
	}
	c.Groups = []uint32{c.GID}
	if c.Name != "" {
		for _, g := range groups {
			if g.gid == c.GID || !contains(g.members, c.Name) || containsID(c.Groups, g.gid) {
				continue
			}
			c.Groups = append(c.Groups, g.gid)
		}
	}
	return c, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func containsID(list []uint32, id uint32) bool {
	for _, x := range list {
		if x == id {
			return true
		}
	}
	return false
}

// parseID parses a decimal uid or gid; a non-number gives an error wrapping
// strconv.ErrSyntax.
func parseID(what, s string) (uint32, error) {
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, fmt.Errorf("%w: %s id %q is out of range", ErrImageConfig, what, s)
	}
	return uint32(n), nil
}

func findUser(users []passwdEntry, name string) (passwdEntry, bool) {
	for _, u := range users {
		if u.name == name {
			return u, true
		}
	}
	return passwdEntry{}, false
}

func findUID(users []passwdEntry, uid uint32) (passwdEntry, bool) {
	for _, u := range users {
		if u.uid == uid {
			return u, true
		}
	}
	return passwdEntry{}, false
}

func findGroup(groups []groupEntry, name string) (groupEntry, bool) {
	for _, g := range groups {
		if g.name == name {
			return g, true
		}
	}
	return groupEntry{}, false
}

// readColonFile returns the fields of each line of an /etc/passwd-style
// file; an absent file has no lines. Comment lines and lines with fewer than
// minFields fields are skipped, as the C library does.
func readColonFile(path string, minFields int) ([][]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrImageConfig, err)
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(io.LimitReader(f, maxAccountFile))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Split(line, ":")
		if len(fields) < minFields {
			continue
		}
		out = append(out, fields)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v", ErrImageConfig, path, err)
	}
	return out, nil
}

// readPasswd parses name:password:uid:gid:gecos:home:shell lines, skipping
// lines whose ids are not numbers.
func readPasswd(path string) ([]passwdEntry, error) {
	lines, err := readColonFile(path, 4)
	if err != nil {
		return nil, err
	}
	var out []passwdEntry
	for _, f := range lines {
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil || f[0] == "" {
			continue
		}
		e := passwdEntry{name: f[0], uid: uint32(uid), gid: uint32(gid)}
		if len(f) > 5 {
			e.home = f[5]
		}
		out = append(out, e)
	}
	return out, nil
}

// readGroup parses name:password:gid:member,member lines, skipping lines
// whose gid is not a number.
func readGroup(path string) ([]groupEntry, error) {
	lines, err := readColonFile(path, 3)
	if err != nil {
		return nil, err
	}
	var out []groupEntry
	for _, f := range lines {
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil || f[0] == "" {
			continue
		}
		e := groupEntry{name: f[0], gid: uint32(gid)}
		if len(f) > 3 && f[3] != "" {
			for _, m := range strings.Split(f[3], ",") {
				if m = strings.TrimSpace(m); m != "" {
					e.members = append(e.members, m)
				}
			}
		}
		out = append(out, e)
	}
	return out, nil
}
