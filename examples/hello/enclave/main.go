// Command enclave is the enclave side of the hello example: a greeting
// service on vsock port 5000. For each connection it reads one line and
// answers with one line that greets the sender and says which world the
// enclave runs in and what its PCR0 is, as its security module reports it.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"time"

	"github.com/cloister/cloister/enclave"
)

// port is the vsock port the service listens on.
const port = 5000

// maxLine bounds the line a client may send.
const maxLine = 4096

func main() {
	log.SetFlags(0)
	log.SetPrefix("hello-enclave: ")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	sess, err := enclave.OpenSession(ctx, nil)
	cancel()
	if err != nil {
		log.Fatalf("opening the security module: %v", err)
	}
	defer sess.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	pcr0, err := sess.DescribePCR(ctx, 0)
	cancel()
	if err != nil {
		log.Fatalf("reading PCR0: %v", err)
	}

	l, err := enclave.Listen(port)
	if err != nil {
		log.Fatalf("listening on vsock port %d: %v", port, err)
	}
	// The integration test and the README wait for this line.
	fmt.Printf("hello-enclave: listening on vsock port %d (world %s)\n", port, sess.World())
	g := greeter{world: sess.World().String(), pcr0: hex.EncodeToString(pcr0.Value)}
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Printf("accept: %v", err)
			continue
		}
		go g.serve(c)
	}
}

// greeter answers one line per connection.
type greeter struct {
	world, pcr0 string
}

func (g greeter) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(io.LimitReader(c, maxLine))
	line, err := r.ReadString('\n')
	if err != nil && line == "" {
		log.Printf("reading from %v: %v", c.RemoteAddr(), err)
		return
	}
	line = strings.TrimSpace(line)
	fmt.Printf("hello-enclave: %v said %q\n", c.RemoteAddr(), line)
	if _, err := fmt.Fprintf(c, "Hello, %s! This is an enclave in the %s world; my PCR0 is %s.\n", line, g.world, g.pcr0); err != nil {
		log.Printf("answering %v: %v", c.RemoteAddr(), err)
	}
}
