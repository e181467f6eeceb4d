package cpulist

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want []int
	}{
		{"", nil},
		{"\n", nil},
		{"0", []int{0}},
		{"2,3,6-9", []int{2, 3, 6, 7, 8, 9}},
		{" 1 , 0-1 \n", []int{0, 1}},
		{"5-5", []int{5}},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.in, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Parse(%q) mismatch (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{",", "a", "1-", "-1", "3-1", "1,,2", "0-9000", "1-2-3", "+1"} {
		if _, err := Parse(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) error = %v, want ErrSyntax", in, err)
		}
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{3}, "3"},
		{[]int{9, 8, 7, 6, 3, 2}, "2-3,6-9"},
		{[]int{1, 1, 2}, "1-2"},
		{[]int{0, 2, 4}, "0,2,4"},
	}
	for _, tt := range tests {
		if got := Format(tt.in); got != tt.want {
			t.Errorf("Format(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"0-3,8", "1", "", "2,3,6-9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(Format(ids))
		if err != nil {
			t.Fatalf("Format output %q does not parse: %v", Format(ids), err)
		}
		if diff := cmp.Diff(ids, again); diff != "" {
			t.Fatalf("round trip mismatch:\n%s", diff)
		}
	})
}
