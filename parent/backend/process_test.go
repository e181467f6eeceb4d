package backend

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestTerminateProcess(t *testing.T) {
	errKill := errors.New("kill failed")
	for _, tc := range []struct {
		name      string
		ended     bool // done is closed before Terminate
		obeysTerm bool // term closes done
		killErr   error
		want      []string
		wantErr   error
	}{
		{"already ended", true, false, nil, nil, nil},
		{"ends on SIGTERM", false, true, nil, []string{"term"}, nil},
		{"killed after the grace", false, false, nil, []string{"term", "kill"}, nil},
		{"kill fails", false, false, errKill, []string{"term", "kill"}, errKill},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan struct{})
			if tc.ended {
				close(done)
			}
			var calls []string
			term := func() error {
				calls = append(calls, "term")
				if tc.obeysTerm {
					close(done)
				}
				return nil
			}
			kill := func() error {
				calls = append(calls, "kill")
				if tc.killErr == nil {
					close(done)
				}
				return tc.killErr
			}
			err := TerminateProcess(context.Background(), done, time.Millisecond, term, kill)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("TerminateProcess = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}
