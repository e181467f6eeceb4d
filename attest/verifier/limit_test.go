package verifier

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// flood asks for what path creates as client until it is refused (at most
// max+1 requests) and returns how many it got and the refusal.
func flood(t *testing.T, client *http.Client, url string, max int, hdr ...string) (int, httpResult) {
	t.Helper()
	for i := range max + 1 {
		r := doWith(t, client, http.MethodPost, url, "", nil, hdr...)
		if r.status != http.StatusCreated {
			return i, r
		}
	}
	t.Fatalf("%s: %d created and none refused", url, max+1)
	return 0, httpResult{}
}

// TestChallengeFloodOneClient is the attack of one client taking every
// challenge (before per-client limits, 127.0.0.1 filled the store in 64
// requests and 127.0.0.2 then got 429): 127.0.0.1 asks for challenges,
// then Veraison sessions, until it is refused, and 127.0.0.2, another
// client, must still get both. Each limit is tried alone, and the defaults.
func TestChallengeFloodOneClient(t *testing.T) {
	const storeSize = 64
	tests := []struct {
		name       string
		cfg        Config
		challenges int    // what the flooding client gets
		sessions   int    // what the flooding client gets
		limit      string // in the refusal
		retry      int    // Retry-After, seconds
	}{
		{"defaults", Config{}, DefaultClientBurst, 0, "faster than 10 per second", 1},
		{"quota", Config{MaxChallengesPerClient: 8, MaxSessionsPerClient: 3, ClientRate: -1}, 8, 3, "holds 8 challenges", 60},
		{"rate", Config{MaxChallengesPerClient: -1, MaxSessionsPerClient: -1, ClientRate: 0.5, ClientBurst: 5}, 5, 0, "faster than 0.5 per second", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			cfg := tt.cfg
			cfg.Clock, cfg.MaxChallenges, cfg.MaxSessions = clock.Now, storeSize, storeSize
			cfg.ChallengeTTL, cfg.SessionTTL = time.Minute, time.Minute
			_, ts := testServer(t, cfg)
			attacker, victim := clientFrom(t, "127.0.0.1"), clientFrom(t, "127.0.0.2")
			challenges := ts.URL + "/v1/challenges"
			sessions := ts.URL + "/challenge-response/v1/newSession"

			got, refused := flood(t, attacker, challenges, storeSize)
			if got != tt.challenges {
				t.Errorf("the flooding client got %d challenges, want %d (store of %d)", got, tt.challenges, storeSize)
			}
			p := wantProblem(t, refused, http.StatusTooManyRequests)
			if p.Type != ProblemTypePrefix+"client-limit" || !strings.Contains(p.Detail, tt.limit) || !strings.Contains(p.Detail, "127.0.0.1/32") {
				t.Errorf("refusal %+v, want a client-limit problem saying %q", p, tt.limit)
			}
			if ra := refused.header.Get("Retry-After"); ra != strconv.Itoa(tt.retry) {
				t.Errorf("Retry-After %q, want %d", ra, tt.retry)
			}
			if tt.sessions > 0 {
				got, refused = flood(t, attacker, sessions, storeSize, "Accept", MediaTypeSession)
				if got != tt.sessions {
					t.Errorf("the flooding client got %d sessions, want %d", got, tt.sessions)
				}
				wantProblem(t, refused, http.StatusTooManyRequests)
			}

			if r := doWith(t, victim, http.MethodPost, challenges, "", nil); r.status != http.StatusCreated {
				t.Fatalf("another client after the flood: %d %s", r.status, r.body)
			}
			if r := doWith(t, victim, http.MethodPost, sessions, "", nil, "Accept", MediaTypeSession); r.status != http.StatusCreated {
				t.Fatalf("another client's session after the flood: %d %s", r.status, r.body)
			}

			// Once Retry-After has passed, the flooding client gets one again.
			clock.Advance(time.Duration(tt.retry) * time.Second)
			if r := doWith(t, attacker, http.MethodPost, challenges, "", nil); r.status != http.StatusCreated {
				t.Fatalf("the flooding client after Retry-After: %d %s", r.status, r.body)
			}
		})
	}
}

// TestSessionDeleteReleases: deleting a session gives the client its
// share back.
func TestSessionDeleteReleases(t *testing.T) {
	_, ts := testServer(t, Config{MaxSessionsPerClient: 2, ClientRate: -1})
	url, _ := newSession(t, ts.URL, "")
	newSession(t, ts.URL, "")
	wantProblem(t, do(t, http.MethodPost, ts.URL+"/challenge-response/v1/newSession", "", nil, "Accept", MediaTypeSession), http.StatusTooManyRequests)
	if r := do(t, http.MethodDelete, url, "", nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	newSession(t, ts.URL, "")
}

// TestStoreFullStillGlobal: the store's own bound still holds when the
// clients together, each within its share, fill it.
func TestStoreFullStillGlobal(t *testing.T) {
	_, ts := testServer(t, Config{MaxChallenges: 4, MaxChallengesPerClient: 2, ClientRate: -1})
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		c := clientFrom(t, ip)
		for range 2 {
			if r := doWith(t, c, http.MethodPost, ts.URL+"/v1/challenges", "", nil); r.status != http.StatusCreated {
				t.Fatalf("%s: %d %s", ip, r.status, r.body)
			}
		}
	}
	r := doWith(t, clientFrom(t, "127.0.0.3"), http.MethodPost, ts.URL+"/v1/challenges", "", nil)
	if p := wantProblem(t, r, http.StatusTooManyRequests); p.Type != ProblemTypePrefix+"too-many" {
		t.Fatalf("full store: %+v", p)
	}
}

func TestClientIdentity(t *testing.T) {
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::1/128")}
	tests := []struct {
		name   string
		ci     clientIdentity
		remote string
		xff    []string
		want   string
	}{
		{"ipv4", clientIdentity{v4: 32, v6: 64}, "192.0.2.7:5555", nil, "192.0.2.7/32"},
		{"ipv4-prefix", clientIdentity{v4: 24, v6: 64}, "192.0.2.7:5555", nil, "192.0.2.0/24"},
		{"ipv6-64", clientIdentity{v4: 32, v6: 64}, "[2001:db8:1:2:3:4:5:6]:443", nil, "2001:db8:1:2::/64"},
		{"ipv6-same-64", clientIdentity{v4: 32, v6: 64}, "[2001:db8:1:2:ffff::1]:443", nil, "2001:db8:1:2::/64"},
		{"ipv6-48", clientIdentity{v4: 32, v6: 48}, "[2001:db8:1:2::1]:443", nil, "2001:db8:1::/48"},
		{"ipv6-zone", clientIdentity{v4: 32, v6: 128}, "[fe80::1%eth0]:443", nil, "fe80::1/128"},
		{"mapped", clientIdentity{v4: 32, v6: 64}, "[::ffff:192.0.2.7]:443", nil, "192.0.2.7/32"},
		{"not-ip", clientIdentity{v4: 32, v6: 64}, "@", nil, unknownClient},
		{"xff-untrusted-peer", clientIdentity{v4: 32, v6: 64}, "192.0.2.7:1", []string{"198.51.100.1"}, "192.0.2.7/32"},
		{"xff-no-proxies", clientIdentity{v4: 32, v6: 64}, "10.1.1.1:1", []string{"198.51.100.1"}, "10.1.1.1/32"},
		{"xff-trusted", clientIdentity{v4: 32, v6: 64, proxies: proxies}, "10.1.1.1:1", []string{"198.51.100.1"}, "198.51.100.1/32"},
		{"xff-spoofed-left", clientIdentity{v4: 32, v6: 64, proxies: proxies}, "10.1.1.1:1", []string{"203.0.113.9, 198.51.100.1"}, "198.51.100.1/32"},
		{"xff-two-proxies", clientIdentity{v4: 32, v6: 64, proxies: proxies}, "10.1.1.1:1", []string{"203.0.113.9, 198.51.100.1", "10.2.2.2"}, "198.51.100.1/32"},
		{"xff-ipv6-proxy", clientIdentity{v4: 32, v6: 64, proxies: proxies}, "[fd00::1]:1", []string{"2001:db8::9"}, "2001:db8::/64"},
		{"xff-all-proxies", clientIdentity{v4: 32, v6: 64, proxies: proxies}, "10.1.1.1:1", []string{"10.3.3.3, 10.2.2.2"}, "10.3.3.3/32"},
		{"xff-garbage", clientIdentity{v4: 32, v6: 64, proxies: proxies}, "10.1.1.1:1", []string{"not-an-ip"}, "10.1.1.1/32"},
		{"xff-absent", clientIdentity{v4: 32, v6: 64, proxies: proxies}, "10.1.1.1:1", nil, "10.1.1.1/32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/v1/challenges", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if diff := cmp.Diff(tt.want, tt.ci.of(r)); diff != "" {
				t.Errorf("client (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLimiterBounded: the limiter forgets idle clients, refuses a new
// client while MaxClients others hold something, and shrinks what a client
// no longer needs.
func TestLimiterBounded(t *testing.T) {
	clock := newFakeClock()
	m := newMemLimiter(limits{quota: [numHoldKinds]int{100, 100}, rate: 1, burst: 2, maxClients: 3})
	exp := func() time.Time { return clock.Now().Add(time.Minute) }
	for i := range 3 {
		if err := m.admit(fmt.Sprint("c", i), holdChallenge, clock.Now(), exp()); err != nil {
			t.Fatal(err)
		}
	}
	err := m.admit("c3", holdChallenge, clock.Now(), exp())
	var le *LimitError
	if !errors.As(err, &le) || !errors.Is(err, ErrClientLimit) || le.Reason != "clients" {
		t.Fatalf("a fourth client of 3: %v", err)
	}
	// c0 gives its challenge back; once its bucket is full again it is
	// idle and makes room.
	m.release("c0", holdChallenge, exp())
	clock.Advance(time.Second)
	if err := m.admit("c3", holdChallenge, clock.Now(), exp()); err != nil {
		t.Fatal(err)
	}
	if n := m.clients(); n != 3 {
		t.Fatalf("%d clients tracked, want 3", n)
	}
	// Everything expires: every client is forgotten at the next sweep.
	clock.Advance(time.Hour)
	if err := m.admit("c4", holdChallenge, clock.Now(), exp()); err != nil {
		t.Fatal(err)
	}
	if n := m.clients(); n != 1 {
		t.Fatalf("%d clients tracked after an hour, want 1", n)
	}

	// A client that held many and now holds few keeps a small slice.
	big := newMemLimiter(limits{quota: [numHoldKinds]int{1000, 1}, maxClients: 1})
	for i := range 1000 {
		if err := big.admit("c", holdChallenge, clock.Now(), clock.Now().Add(time.Duration(i+1)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := big.admit("c", holdChallenge, clock.Now(), exp()); !errors.As(err, &le) || le.Reason != "challenges" || le.RetryAfter != time.Second {
		t.Fatalf("over quota: %v", err)
	}
	clock.Advance(990 * time.Second)
	if err := big.admit("c", holdChallenge, clock.Now(), exp()); err != nil {
		t.Fatal(err)
	}
	if c := big.m["c"]; len(c.held[holdChallenge]) != 11 || cap(c.held[holdChallenge]) > 64 {
		t.Fatalf("held %d, capacity %d", len(c.held[holdChallenge]), cap(c.held[holdChallenge]))
	}
}

func TestClientLimitConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"v4-prefix":   {ClientIPv4Prefix: 33},
		"v4-negative": {ClientIPv4Prefix: -1},
		"v6-prefix":   {ClientIPv6Prefix: 129},
		"proxy":       {TrustedProxies: []netip.Prefix{{}}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzClientIdentity: any peer address and X-Forwarded-For give a client
// name that is an address block or "unknown", and the header changes
// nothing unless the peer is a trusted proxy.
func FuzzClientIdentity(f *testing.F) {
	f.Add("192.0.2.7:1", "198.51.100.1")
	f.Add("10.1.1.1:1", "203.0.113.9, 198.51.100.1, 10.2.2.2")
	f.Add("[fd00::1]:1", "2001:db8::9,,")
	f.Add("@", "")
	ci := clientIdentity{v4: 32, v6: 64, proxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}}
	plain := clientIdentity{v4: 32, v6: 64}
	f.Fuzz(func(t *testing.T, remote, xff string) {
		r := httptest.NewRequest(http.MethodPost, "/v1/challenges", nil)
		r.RemoteAddr = remote
		r.Header.Set("X-Forwarded-For", xff)
		got := ci.of(r)
		if got != unknownClient {
			if _, err := netip.ParsePrefix(got); err != nil {
				t.Fatalf("client %q: %v", got, err)
			}
		}
		direct := plain.of(r)
		r.Header.Del("X-Forwarded-For")
		if plain.of(r) != direct {
			t.Fatalf("X-Forwarded-For %q changed the client without trusted proxies", xff)
		}
		if ap, err := netip.ParseAddrPort(remote); err == nil && !ci.trusted(ap.Addr().Unmap()) && got != direct {
			t.Fatalf("X-Forwarded-For %q believed from an untrusted peer %s", xff, remote)
		}
	})
}

// BenchmarkNewChallenge is POST /v1/challenges in process, from 256
// clients in turn, on a clock that advances 1 ms per request.
func BenchmarkNewChallenge(b *testing.B) {
	var now time.Time
	clock := func() time.Time { now = now.Add(time.Millisecond); return now }
	s, err := New(Config{Clock: clock, ChallengeTTL: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	remotes := make([]string, 256)
	for i := range remotes {
		remotes[i] = fmt.Sprintf("192.0.2.%d:1234", i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r := httptest.NewRequest(http.MethodPost, "/v1/challenges", nil)
		r.RemoteAddr = remotes[i%len(remotes)]
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != http.StatusCreated {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}
