// Package egresstest provides what tests of the egress proxy need from the
// outside network: a real DNS server on loopback whose answers the test
// scripts, per name and per query, so a name can resolve to several
// addresses or change its answer between two lookups (DNS rebinding).
package egresstest

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// AnswerFunc returns the addresses name resolves to on its nth query of a
// record type (n counts from 1, separately for A and AAAA queries). name is
// lower-case without the trailing dot. The server answers A queries with the
// IPv4 addresses and AAAA queries with the IPv6 ones (an IPv4-mapped IPv6
// address such as ::ffff:127.0.0.1 is sent as AAAA). ok false answers
// NXDOMAIN.
type AnswerFunc func(name string, n int) (addrs []netip.Addr, ok bool)

// DNSServer is an authoritative-only DNS server on 127.0.0.1, over UDP and
// TCP on the same port, that answers from an AnswerFunc with TTL 0.
type DNSServer struct {
	answer AnswerFunc
	udp    net.PacketConn
	tcp    net.Listener
	wg     sync.WaitGroup

	mu     sync.Mutex
	counts map[question]int
}

type question struct {
	name  string
	qtype dnsmessage.Type
}

// StaticAnswers answers every query of a name with the same addresses.
func StaticAnswers(m map[string][]netip.Addr) AnswerFunc {
	return func(name string, _ int) ([]netip.Addr, bool) {
		a, ok := m[name]
		return a, ok
	}
}

// StartDNS starts a DNS server on loopback that answers with answer, and
// stops it when the test ends.
func StartDNS(t testing.TB, answer AnswerFunc) *DNSServer {
	t.Helper()
	s := &DNSServer{answer: answer, counts: map[question]int{}}
	// UDP and TCP share one port, as a real nameserver's do; retry if the
	// port the kernel picked for UDP is taken for TCP.
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("egresstest: dns: listen udp: %v", err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			s.udp, s.tcp = pc, l
			break
		}
		pc.Close()
		if attempt == 10 {
			t.Fatalf("egresstest: dns: listen tcp: %v", err)
		}
	}
	s.wg.Add(2)
	go s.serveUDP()
	go s.serveTCP()
	t.Cleanup(s.close)
	return s
}

// Addr returns the server's address, 127.0.0.1:port.
func (s *DNSServer) Addr() string { return s.udp.LocalAddr().String() }

// Queries returns how many A queries of name the server has answered.
func (s *DNSServer) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[question{strings.ToLower(strings.TrimSuffix(name, ".")), dnsmessage.TypeA}]
}

func (s *DNSServer) close() {
	s.udp.Close()
	s.tcp.Close()
	s.wg.Wait()
}

func (s *DNSServer) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := s.respond(buf[:n]); resp != nil {
			_, _ = s.udp.WriteTo(resp, from)
		}
	}
}

func (s *DNSServer) serveTCP() {
	defer s.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer c.Close()
			for {
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				msg := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, msg); err != nil {
					return
				}
				resp := s.respond(msg)
				if resp == nil {
					return
				}
				out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
				if _, err := c.Write(append(out, resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// respond builds the answer to one query message, or nil for garbage.
func (s *DNSServer) respond(msg []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}

	var addrs []netip.Addr
	ok := false
	if q.Class == dnsmessage.ClassINET && (q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeAAAA) {
		s.mu.Lock()
		k := question{name, q.Type}
		s.counts[k]++
		n := s.counts[k]
		s.mu.Unlock()
		addrs, ok = s.answer(name, n)
		if !ok {
			// Unknown names are not counted: the resolver may try search
			// domains first.
			s.mu.Lock()
			s.counts[k]--
			s.mu.Unlock()
		}
	} else if _, known := s.answer(name, 0); known {
		ok = true // a known name without records of this type
	}
	if !ok {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	if err := b.Question(q); err != nil {
		return nil
	}
	if err := b.StartAnswers(); err != nil {
		return nil
	}
	for _, a := range addrs {
		hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 0}
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			err = b.AResource(hdr, dnsmessage.AResource{A: a.As4()})
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			err = b.AAAAResource(hdr, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			return nil
		}
	}
	resp, err := b.Finish()
	if err != nil {
		return nil
	}
	return resp
}
