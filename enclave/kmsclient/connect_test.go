package kmsclient

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestConnectTunnel(t *testing.T) {
	tests := []struct {
		answer  string
		wantErr string
	}{
		{"HTTP/1.1 200 Connection established\r\n\r\n", ""},
		{"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "status 403"},
		{"garbage\r\n\r\n", "malformed"},
		{"HTTP/1.1 200 OK\r\n", "reading its answer"},
	}
	for _, tc := range tests {
		client, proxy := net.Pipe()
		go func() {
			buf := make([]byte, 512)
			n, _ := proxy.Read(buf)
			if !strings.HasPrefix(string(buf[:n]), "CONNECT 127.0.0.1:7777 HTTP/1.1\r\n") {
				t.Errorf("proxy got %q", buf[:n])
			}
			io.WriteString(proxy, tc.answer)
			// Tunnel bytes right after the answer must stay unread.
			if tc.wantErr == "" {
				io.WriteString(proxy, "tunnel")
			}
			proxy.Close()
		}()
		err := connectTunnel(testCtx(t), client, "127.0.0.1:7777")
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("answer %q: %v", tc.answer, err)
				continue
			}
			b, _ := io.ReadAll(client)
			if string(b) != "tunnel" {
				t.Errorf("tunnel bytes %q", b)
			}
		} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("answer %q: %v, want %q", tc.answer, err, tc.wantErr)
		}
		client.Close()
	}
}
