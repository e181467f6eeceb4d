package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/parent"
)

func TestEgressPolicyFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "own.yaml")
	if err := os.WriteFile(file, []byte("allowlist:\n- {address: 10.0.0.0/8, port: 5432}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(empty, []byte("allowlist: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		allow   []string
		file    string
		want    []parent.EgressEntry
		wantErr string
	}{
		{"repeated and comma-separated", []string{"kms.example:443", "10.0.0.5:5432, [fd00::1]:443"}, "",
			[]parent.EgressEntry{{Address: "kms.example", Port: 443}, {Address: "10.0.0.5", Port: 5432}, {Address: "fd00::1", Port: 443}}, ""},
		{"flag and file", []string{"kms.example:443"}, file,
			[]parent.EgressEntry{{Address: "kms.example", Port: 443}, {Address: "10.0.0.0/8", Port: 5432}}, ""},
		{"empty flag allows nothing", []string{""}, "", []parent.EgressEntry{}, ""},
		{"empty file allows nothing", nil, empty, []parent.EgressEntry{}, ""},
		{"bad entry", []string{"kms.example"}, "", nil, `--egress-allow "kms.example"`},
		{"missing file", nil, filepath.Join(t.TempDir(), "nope.yaml"), nil, "--egress-allowlist"},
		{"too many", []string{strings.Repeat("10.0.0.1:1,", 200) + "10.0.0.1:1", strings.Repeat("10.0.0.1:1,", 56) + "10.0.0.1:1"}, "", nil, "at most 256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := egressPolicy(tt.allow, tt.file)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("egressPolicy = %v, %v; want an error with %q", p, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, p.Allowlist); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
		})
	}
}
