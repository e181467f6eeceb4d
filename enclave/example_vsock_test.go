package enclave_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"github.com/cloister/cloister/enclave"
)

// An enclave service accepting connections from the parent instance on port
// 5005. The same code runs in a Nitro enclave, a microVM and the sandbox.
func ExampleListen() {
	l, err := enclave.Listen(5005)
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func(c net.Conn) {
			defer c.Close()
			io.Copy(c, c) // echo
		}(c)
	}
}

// The boot heartbeat: connect to the parent's port 9000, send 0xB7 and wait
// for it to come back.
func ExampleDialParent() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := enclave.DialParent(ctx, 9000)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{0xB7}); err != nil {
		log.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 0xB7 {
		log.Fatalf("heartbeat failed: %x, %v", b, err)
	}
}

// Dialing an explicit (CID, port) and telling the failure classes apart.
func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := enclave.Dial(ctx, enclave.ParentCID, 8000)
	switch {
	case errors.Is(err, enclave.ErrNoListener):
		log.Fatal("start the egress proxy on the parent (port 8000)")
	case errors.Is(err, enclave.ErrTimeout):
		log.Fatal("the parent did not answer in time")
	case err != nil:
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("connected from", c.LocalAddr(), "to", c.RemoteAddr())
}
