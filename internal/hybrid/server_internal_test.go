package hybrid

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestAllocPortWrapsAndSkipsBusy(t *testing.T) {
	var s Server
	first := s.allocPort()
	if first != FirstHostPort {
		t.Fatalf("first port %d, want %d", first, FirstHostPort)
	}
	s.nextPort = 1<<31 - 1
	var got []uint32
	for range 3 {
		got = append(got, s.allocPort())
	}
	// 1<<30 is still in use (first), so the wrap-around skips it.
	want := []uint32{1<<31 - 1, FirstHostPort + 1, FirstHostPort + 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
	s.freePort(first)
	s.nextPort = FirstHostPort
	if p := s.allocPort(); p != FirstHostPort {
		t.Errorf("freed port not reused: got %d", p)
	}
}
