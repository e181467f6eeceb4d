package initproc

import (
	"errors"
	"testing"
)

func TestDetectWorld(t *testing.T) {
	tests := []struct {
		name    string
		pid     int
		env     map[string]string
		want    World
		wantErr bool
	}{
		{"vm: PID 1, unset", 1, nil, WorldVM, false},
		{"vm: PID 1, empty", 1, map[string]string{EnvWorld: ""}, WorldVM, false},
		{"sandbox as PID 1", 1, map[string]string{EnvWorld: "sandbox"}, WorldSandbox, false},
		{"sandbox not PID 1", 4242, map[string]string{EnvWorld: "sandbox"}, WorldSandbox, false},
		{"unset, not PID 1", 4242, nil, "", true},
		{"unknown value", 1, map[string]string{EnvWorld: "microvm"}, "", true},
		{"case matters", 1, map[string]string{EnvWorld: "Sandbox"}, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DetectWorld(tc.pid, func(k string) string { return tc.env[k] })
			if tc.wantErr {
				if !errors.Is(err, ErrWorld) || got != "" {
					t.Fatalf("DetectWorld = %q, %v; want ErrWorld", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("DetectWorld = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
