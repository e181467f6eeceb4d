// Command existingapp is an "existing Nitro Enclaves application": it knows
// nothing of Cloister and uses only what such programs use on Nitro — the
// /dev/nsm ioctl through github.com/hf/nsm and AF_VSOCK through
// github.com/mdlayher/vsock — so that the end-to-end tests can run it
// unchanged in every world. existingapp.py next to it does the same in
// Python with fcntl.ioctl and socket.AF_VSOCK.
//
// Protocol (shared with existingapp.py):
//
//  1. listen on vsock port 5005 and print "EXISTINGAPP READY go";
//  2. accept one connection and read one line
//     "<nonce hex> <user data hex> <parent port>";
//  3. ask the NSM for PCR0, PCR1, PCR2, an attestation document with that
//     nonce and user data, and GetRandom;
//  4. dial the parent (CID 3) on <parent port>, send
//     "hello from existingapp go\n" and read one line back;
//  5. write one JSON line to the accepted connection:
//     {"lang","pcr0","pcr1","pcr2" (hex),"document" (base64),
//     "random" (hex),"parent_reply"} — or {"error": "..."} — and exit.
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/hf/nsm"
	"github.com/hf/nsm/request"
	"github.com/mdlayher/vsock"
)

const (
	listenPort = 5005
	parentCID  = 3 // the parent instance, as on Nitro
)

type report struct {
	Lang        string `json:"lang"`
	PCR0        string `json:"pcr0,omitempty"`
	PCR1        string `json:"pcr1,omitempty"`
	PCR2        string `json:"pcr2,omitempty"`
	Document    string `json:"document,omitempty"`
	Random      string `json:"random,omitempty"`
	ParentReply string `json:"parent_reply,omitempty"`
	Error       string `json:"error,omitempty"`
}

func main() {
	l, err := vsock.Listen(listenPort, nil)
	if err != nil {
		fmt.Println("existingapp: listen:", err)
		os.Exit(1)
	}
	fmt.Println("EXISTINGAPP READY go")
	c, err := l.Accept()
	if err != nil {
		fmt.Println("existingapp: accept:", err)
		os.Exit(1)
	}
	r := run(c)
	if r.Error != "" {
		fmt.Println("existingapp: error:", r.Error)
	}
	if err := json.NewEncoder(c).Encode(r); err != nil {
		fmt.Println("existingapp: writing the report:", err)
	}
	c.Close()
	l.Close()
	fmt.Println("EXISTINGAPP DONE")
}

func run(c net.Conn) report {
	r := report{Lang: "go"}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		r.Error = "reading the request: " + err.Error()
		return r
	}
	f := strings.Fields(line)
	if len(f) != 3 {
		r.Error = fmt.Sprintf("want \"<nonce hex> <user data hex> <parent port>\", got %q", line)
		return r
	}
	nonce, err1 := hex.DecodeString(f[0])
	userData, err2 := hex.DecodeString(f[1])
	port, err3 := strconv.ParseUint(f[2], 10, 32)
	if err := errors.Join(err1, err2, err3); err != nil {
		r.Error = "parsing the request: " + err.Error()
		return r
	}

	sess, err := nsm.OpenDefaultSession()
	if err != nil {
		r.Error = "opening /dev/nsm: " + err.Error()
		return r
	}
	defer sess.Close()
	for i, dst := range []*string{&r.PCR0, &r.PCR1, &r.PCR2} {
		res, err := sess.Send(&request.DescribePCR{Index: uint16(i)})
		if err != nil || res.DescribePCR == nil {
			r.Error = fmt.Sprintf("DescribePCR %d: %v (error %q)", i, err, res.Error)
			return r
		}
		*dst = hex.EncodeToString(res.DescribePCR.Data)
	}
	res, err := sess.Send(&request.Attestation{Nonce: nonce, UserData: userData})
	if err != nil || res.Attestation == nil {
		r.Error = fmt.Sprintf("Attestation: %v (error %q)", err, res.Error)
		return r
	}
	r.Document = base64.StdEncoding.EncodeToString(res.Attestation.Document)
	res, err = sess.Send(&request.GetRandom{})
	if err != nil || res.GetRandom == nil {
		r.Error = fmt.Sprintf("GetRandom: %v (error %q)", err, res.Error)
		return r
	}
	r.Random = hex.EncodeToString(res.GetRandom.Random)

	p, err := vsock.Dial(parentCID, uint32(port), nil)
	if err != nil {
		r.Error = "dialling the parent: " + err.Error()
		return r
	}
	defer p.Close()
	if _, err := p.Write([]byte("hello from existingapp go\n")); err != nil {
		r.Error = "writing to the parent: " + err.Error()
		return r
	}
	reply, err := bufio.NewReader(p).ReadString('\n')
	if err != nil {
		r.Error = "reading from the parent: " + err.Error()
		return r
	}
	r.ParentReply = strings.TrimSpace(reply)
	return r
}
