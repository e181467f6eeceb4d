package cgroups

import (
	"errors"
	"testing"
)

func TestOwnGroup(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		err            error
	}{
		{"v2", "0::/system.slice/cloister-daemon.service/supervisor\n", "/system.slice/cloister-daemon.service/supervisor", nil},
		{"hybrid prefers name=systemd", "12:memory:/system.slice/cloister-daemon.service\n1:name=systemd:/system.slice/cloister-daemon.service\n0::/system.slice/other\n", "/system.slice/cloister-daemon.service", nil},
		{"v1", "4:memory:/process_api/x\n9:name=systemd:/\n", "/", nil},
		{"colon in path", "0::/a:b\n", "/a:b", nil},
		{"root", "0::/\n", "/", nil},
		{"no tracking hierarchy", "4:memory:/x\n", "", ErrUnavailable},
		{"relative", "0::x\n", "", ErrUnavailable},
		{"unclean", "0::/a/../b\n", "", ErrUnavailable},
		{"deleted", "0::/a (deleted)\n", "", ErrUnavailable},
		{"namespace root outside", "0::/../x\n", "", ErrUnavailable},
		{"malformed", "garbage\n", "", ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := OwnGroup([]byte(tc.in))
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("OwnGroup(%q) error %v, want %v", tc.in, err, tc.err)
			}
			if got != tc.want {
				t.Errorf("OwnGroup(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestDelegatedParent(t *testing.T) {
	for _, tc := range []struct {
		mode     Mode
		own      string
		want     string
		unusable bool
	}{
		{ModeV2, "/system.slice/cloister-daemon.service/supervisor", "system.slice/cloister-daemon.service/enclaves", false},
		{ModeV2, "/system.slice/cloister-daemon.service", "", true},
		{ModeV2, "/supervisor", "", true},
		{ModeV2, "/", "", true},
		{ModeHybrid, "/system.slice/cloister-daemon.service", "system.slice/cloister-daemon.service/enclaves", false},
		{ModeV1, "/system.slice/cloister-daemon.service", "system.slice/cloister-daemon.service/enclaves", false},
		{ModeV1, "/", "", true},
		{ModeUnavailable, "/x", "", true},
	} {
		got, err := DelegatedParent(tc.mode, tc.own)
		if tc.unusable != errors.Is(err, ErrUnavailable) || got != tc.want {
			t.Errorf("DelegatedParent(%v, %q) = %q, %v; want %q (unusable %v)", tc.mode, tc.own, got, err, tc.want, tc.unusable)
		}
		if err == nil {
			if cerr := checkRel(got); cerr != nil {
				t.Errorf("DelegatedParent(%v, %q) = %q, not a valid Parent: %v", tc.mode, tc.own, got, cerr)
			}
		}
	}
}

func FuzzOwnGroup(f *testing.F) {
	for _, s := range []string{"0::/\n", "1:name=systemd:/a/b\n0::/c\n", "4:memory:/x\n", "0::/a:b:c\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := OwnGroup(b)
		if err != nil {
			return
		}
		if p == "" || p[0] != '/' {
			t.Fatalf("OwnGroup returned %q", p)
		}
		for _, m := range []Mode{ModeV1, ModeHybrid, ModeV2} {
			if parent, err := DelegatedParent(m, p); err == nil {
				if cerr := checkRel(parent); cerr != nil {
					t.Fatalf("DelegatedParent(%v, %q) = %q: %v", m, p, parent, cerr)
				}
			}
		}
	})
}
