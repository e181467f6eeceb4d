// Command parent is the parent side of the hello example: it connects to
// the greeting service on vsock port 5000 of a running enclave through the
// Cloister daemon, sends one line and prints the enclave's answer.
//
//	parent [-enclave NAME] [-port 5000] [-timeout 30s] [MESSAGE]
//
// The daemon's socket is $CLOISTER_SOCKET, else /run/cloister/cloisterd.sock.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/parent"
)

func main() {
	name := flag.String("enclave", "hello", "enclave name or ID")
	port := flag.Uint("port", 5000, "vsock port of the greeting service")
	timeout := flag.Duration("timeout", 30*time.Second, "give up after this long (the service may still be starting)")
	flag.Parse()
	msg := "parent"
	if flag.NArg() > 0 {
		msg = strings.Join(flag.Args(), " ")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	reply, err := greet(ctx, parent.NewClient(""), *name, uint32(*port), msg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parent:", err)
		os.Exit(1)
	}
	fmt.Print(reply)
}

// greet sends msg as one line to the enclave's port and returns the line
// it answers.
func greet(ctx context.Context, c *parent.Client, name string, port uint32, msg string) (string, error) {
	conn, err := connect(ctx, c, name, port)
	if err != nil {
		return "", fmt.Errorf("connecting to port %d of enclave %s: %w", port, name, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, strings.ReplaceAll(msg, "\n", " ")+"\n"); err != nil {
		return "", fmt.Errorf("sending: %w", err)
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading the answer: %w", err)
	}
	return reply, nil
}

// connect retries while the enclave's service is not listening yet (the
// daemon reports an enclave as running once it has booted, which may be
// before its application listens).
func connect(ctx context.Context, c *parent.Client, name string, port uint32) (net.Conn, error) {
	for {
		conn, err := c.Connect(ctx, name, port)
		if err == nil || !errors.Is(err, enclave.ErrNoListener) {
			return conn, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
