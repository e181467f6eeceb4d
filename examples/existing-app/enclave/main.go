// Command attest-server is an existing AWS Nitro Enclaves program, written
// as such programs are, without Cloister: it talks to the Nitro Secure
// Module through /dev/nsm with github.com/hf/nsm and to the parent through
// AF_VSOCK with github.com/mdlayher/vsock. It runs unchanged on Nitro and
// in Cloister's sandbox and microVM worlds.
//
// On vsock port 5000 it reads one line per connection, a nonce in hex, and
// answers with an attestation document (base64, one line) carrying that
// nonce and the user data "existing-app".
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log"
	"net"
	"strings"

	"github.com/hf/nsm"
	"github.com/hf/nsm/request"
	"github.com/mdlayher/vsock"
)

const port = 5000

func main() {
	sess, err := nsm.OpenDefaultSession()
	if err != nil {
		log.Fatalf("attest-server: opening /dev/nsm: %v", err)
	}
	defer sess.Close()
	res, err := sess.Send(&request.DescribePCR{Index: 0})
	if err != nil || res.DescribePCR == nil {
		log.Fatalf("attest-server: DescribePCR 0: %v (%q)", err, res.Error)
	}
	l, err := vsock.Listen(port, nil)
	if err != nil {
		log.Fatalf("attest-server: listening on vsock port %d: %v", port, err)
	}
	fmt.Printf("attest-server: listening on vsock port %d; PCR0 %x\n", port, res.DescribePCR.Data)
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatalf("attest-server: accept: %v", err)
		}
		go serve(sess, c)
	}
}

// serve answers one connection: a nonce line in, a document line out.
func serve(sess *nsm.Session, c net.Conn) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Printf("attest-server: %v: reading the nonce: %v\n", c.RemoteAddr(), err)
		return
	}
	nonce, err := hex.DecodeString(strings.TrimSpace(line))
	if err != nil {
		fmt.Fprintf(c, "error: the nonce is not hex: %v\n", err)
		return
	}
	res, err := sess.Send(&request.Attestation{Nonce: nonce, UserData: []byte("existing-app")})
	if err != nil || res.Attestation == nil {
		fmt.Fprintf(c, "error: attestation: %v (%q)\n", err, res.Error)
		return
	}
	fmt.Fprintln(c, base64.StdEncoding.EncodeToString(res.Attestation.Document))
	fmt.Printf("attest-server: %v: attested nonce %x\n", c.RemoteAddr(), nonce)
}
