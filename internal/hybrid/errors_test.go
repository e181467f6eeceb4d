package hybrid

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

func TestClassify(t *testing.T) {
	expired, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	<-expired.Done()
	sys := func(e syscall.Errno) error { return os.NewSyscallError("connect", e) }
	tests := []struct {
		name  string
		ctx   context.Context
		err   error
		class error // nil: returned unchanged
	}{
		{"enoent", nil, sys(syscall.ENOENT), ErrNoListener},
		{"econnrefused", nil, sys(syscall.ECONNREFUSED), ErrNoListener},
		{"econnreset", nil, sys(syscall.ECONNRESET), ErrReset},
		{"etimedout", nil, sys(syscall.ETIMEDOUT), ErrTimeout},
		{"deadline", nil, os.ErrDeadlineExceeded, ErrTimeout},
		{"context deadline", nil, fmt.Errorf("x: %w", context.DeadlineExceeded), ErrTimeout},
		{"other error under expired ctx", expired, errors.New("operation was canceled"), ErrTimeout},
		{"eacces", nil, sys(syscall.EACCES), nil},
		{"eof", nil, io.EOF, nil},
		{"closed", nil, net.ErrClosed, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			got := Classify(ctx, tt.err, 7)
			if tt.class == nil {
				if got != tt.err {
					t.Fatalf("Classify(%v) = %v, want it unchanged", tt.err, got)
				}
				return
			}
			var e *Error
			if !errors.As(got, &e) || e.Class != tt.class || e.Port != 7 || !errors.Is(got, tt.err) {
				t.Fatalf("Classify(%v) = %#v, want class %v port 7 wrapping the cause", tt.err, got, tt.class)
			}
			if again := Classify(context.Background(), got, 9); again != got {
				t.Errorf("Classify is not idempotent: %v", again)
			}
		})
	}
	if Classify(context.Background(), nil, 1) != nil {
		t.Error("Classify(nil) != nil")
	}
}

func TestErrorMessage(t *testing.T) {
	e := &Error{Class: ErrNoListener, Port: 5000, Err: io.EOF}
	if got, want := e.Error(), "nobody listening on port 5000: EOF"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e = &Error{Class: ErrTimeout, Port: 1}
	if got, want := e.Error(), "timed out on port 1"; got != want || !e.Timeout() {
		t.Errorf("Error() = %q (timeout %v), want %q", got, e.Timeout(), want)
	}
	oe := opError("read", e, nil, nil)
	if ne, ok := oe.(net.Error); !ok || !ne.Timeout() {
		t.Errorf("opError of a timeout is not a net.Error with Timeout(): %v", oe)
	}
}
