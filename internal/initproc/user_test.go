package initproc

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const testPasswd = `root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App User,,,:/home/app:/bin/sh
broken line without colons
bad:x:notanumber:1::/:/bin/sh
nohome:x:1001:1001
svc:x:2000:3000::/srv:/bin/false
1234:x:4321:4321::/named-by-number:/bin/sh
`

const testGroup = `root:x:0:
daemon:x:1:
app:x:1000:
staff:x:50:app,svc
video:x:44:svc, app
audio:x:29:other
wheel:x:10:app
svcgrp:x:3000:
bad:x:nan:app
`

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{"etc/passwd": testPasswd, "etc/group": testGroup})
	tests := []struct {
		spec    string
		want    Credential
		wantErr error
	}{
		{"", Credential{UID: 0, GID: 0, Groups: []uint32{0}, Name: "root", Home: "/root"}, nil},
		{"root", Credential{UID: 0, GID: 0, Groups: []uint32{0}, Name: "root", Home: "/root"}, nil},
		{"app", Credential{UID: 1000, GID: 1000, Groups: []uint32{1000, 50, 44, 10}, Name: "app", Home: "/home/app"}, nil},
		{"1000", Credential{UID: 1000, GID: 1000, Groups: []uint32{1000, 50, 44, 10}, Name: "app", Home: "/home/app"}, nil},
		{"svc", Credential{UID: 2000, GID: 3000, Groups: []uint32{3000, 50, 44}, Name: "svc", Home: "/srv"}, nil},
		{"nohome", Credential{UID: 1001, GID: 1001, Groups: []uint32{1001}, Name: "nohome", Home: "/"}, nil},
		{"5555", Credential{UID: 5555, GID: 0, Groups: []uint32{0}, Home: "/"}, nil},
		{"5555:7", Credential{UID: 5555, GID: 7, Groups: []uint32{7}, Home: "/"}, nil},
		{"app:staff", Credential{UID: 1000, GID: 50, Groups: []uint32{50}, Name: "app", Home: "/home/app"}, nil},
		{"app:99", Credential{UID: 1000, GID: 99, Groups: []uint32{99}, Name: "app", Home: "/home/app"}, nil},
		{"1000:wheel", Credential{UID: 1000, GID: 10, Groups: []uint32{10}, Name: "app", Home: "/home/app"}, nil},
		{"1234", Credential{UID: 4321, GID: 4321, Groups: []uint32{4321}, Name: "1234", Home: "/named-by-number"}, nil}, // names win
		{"4294967294", Credential{UID: 4294967294, GID: 0, Groups: []uint32{0}, Home: "/"}, nil},
		{"nobody", Credential{}, ErrUnknownUser},
		{"app:nogroup", Credential{}, ErrUnknownGroup},
		{"4294967295", Credential{}, ErrImageConfig},
		{"99999999999", Credential{}, ErrImageConfig},
		{"app:", Credential{}, ErrImageConfig},
		{":staff", Credential{}, ErrImageConfig},
		{"-1", Credential{}, ErrUnknownUser},
	}
	for _, tc := range tests {
		got, err := ResolveUser(root, tc.spec)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("ResolveUser(%q) = %+v, %v; want error %v", tc.spec, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ResolveUser(%q): %v", tc.spec, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ResolveUser(%q) (-want +got):\n%s", tc.spec, diff)
		}
	}
}

func TestResolveUserNoAccountFiles(t *testing.T) {
	root := t.TempDir() // a scratch image: no /etc at all
	for spec, want := range map[string]Credential{
		"":          {UID: 0, GID: 0, Groups: []uint32{0}, Home: "/"},
		"65534":     {UID: 65534, GID: 0, Groups: []uint32{0}, Home: "/"},
		"1000:1000": {UID: 1000, GID: 1000, Groups: []uint32{1000}, Home: "/"},
	} {
		got, err := ResolveUser(root, spec)
		if err != nil {
			t.Errorf("ResolveUser(%q): %v", spec, err)
			continue
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ResolveUser(%q) (-want +got):\n%s", spec, diff)
		}
	}
	if _, err := ResolveUser(root, "app"); !errors.Is(err, ErrUnknownUser) {
		t.Errorf("ResolveUser(app) without /etc/passwd: %v, want ErrUnknownUser", err)
	}
}
