package nsmdevtest

import (
	"bytes"
	"context"
	"sync"
)

// Module is an nsmdev.RoundTripper standing for the security module: it
// records every request and answers each with Resp, or fails with Err. It
// is safe for concurrent use.
type Module struct {
	Resp []byte
	Err  error

	mu   sync.Mutex
	reqs [][]byte
}

// RoundTrip records req and returns a copy of Resp, or Err.
func (m *Module) RoundTrip(ctx context.Context, req []byte) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reqs = append(m.reqs, bytes.Clone(req))
	if m.Err != nil {
		return nil, m.Err
	}
	return bytes.Clone(m.Resp), nil
}

// Requests returns the requests received so far, in order.
func (m *Module) Requests() [][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([][]byte(nil), m.reqs...)
}

// Pattern returns n bytes that differ from their neighbours, starting
// from seed: recognisable request and response contents.
func Pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}
