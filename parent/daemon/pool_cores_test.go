package daemon

import (
	"errors"
	"testing"

	"github.com/cloister/cloister/parent"
	"github.com/google/go-cmp/cmp"
)

func TestPoolWholeCores(t *testing.T) {
	// Two cores with two hyperthreads each: {1,9} and {2,10}.
	p := newPool([]int{1, 2, 9, 10}, 1024).withCores([][]int{{1, 9}, {2, 10}})
	got, err := p.allocate("a", 2, nil, 64)
	if err != nil || !cmp.Equal(got, []int{1, 9}) {
		t.Fatalf("count 2: %v %v, want the whole core [1 9]", got, err)
	}
	if _, err := p.allocate("b", 1, nil, 64); !errors.Is(err, parent.ErrResources) {
		t.Errorf("count 1 with two-thread cores: %v", err)
	}
	if _, err := p.allocate("b", 0, []int{2}, 64); !errors.Is(err, parent.ErrInvalidArgument) {
		t.Errorf("half a core by id: %v", err)
	}
	got, err = p.allocate("b", 0, []int{10, 2}, 64)
	if err != nil || !cmp.Equal(got, []int{2, 10}) {
		t.Fatalf("whole core by ids: %v %v", got, err)
	}
	if _, err := p.allocate("c", 2, nil, 64); !errors.Is(err, parent.ErrResources) {
		t.Errorf("pool exhausted: %v", err)
	}
	p.release("a")
	if got, err := p.allocate("c", 2, nil, 64); err != nil || !cmp.Equal(got, []int{1, 9}) {
		t.Errorf("after release: %v %v", got, err)
	}
}
