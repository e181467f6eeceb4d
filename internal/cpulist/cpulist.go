// Package cpulist parses and formats the Linux cpu-list syntax ("0-3,8,10-11")
// used by sysfs, cgroup cpusets, nitro-cli's allocator.yaml and the
// nitro_enclaves ne_cpus module parameter.
package cpulist

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// ErrSyntax is returned for a malformed cpu list.
var ErrSyntax = errors.New("cpulist: invalid cpu list")

// MaxCPU bounds the CPU ids accepted by Parse so a hostile or mistyped range
// such as "0-4000000000" cannot allocate without bound.
const MaxCPU = 8191

// Parse parses a cpu list such as "2,3,6-9" into a sorted slice without
// duplicates. Whitespace around elements and a trailing newline are
// tolerated; an empty string yields an empty list.
func Parse(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	seen := map[int]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := parseID(lo)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %v", ErrSyntax, s, err)
		}
		b := a
		if isRange {
			if b, err = parseID(hi); err != nil {
				return nil, fmt.Errorf("%w %q: %v", ErrSyntax, s, err)
			}
			if b < a {
				return nil, fmt.Errorf("%w %q: range %d-%d is reversed", ErrSyntax, s, a, b)
			}
		}
		for i := a; i <= b; i++ {
			seen[i] = true
		}
	}
	out := make([]int, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	sort.Ints(out)
	return out, nil
}

func parseID(s string) (int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty element")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a cpu id", s)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a cpu id", s)
	}
	if n > MaxCPU {
		return 0, fmt.Errorf("cpu id %d is above %d", n, MaxCPU)
	}
	return n, nil
}

// Format renders ids in canonical form: sorted, duplicates removed,
// consecutive ids collapsed into ranges ("0-3,8").
func Format(ids []int) string {
	if len(ids) == 0 {
		return ""
	}
	s := append([]int(nil), ids...)
	sort.Ints(s)
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] <= s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if s[i] == s[j] {
			b.WriteString(strconv.Itoa(s[i]))
		} else {
			fmt.Fprintf(&b, "%d-%d", s[i], s[j])
		}
		i = j + 1
	}
	return b.String()
}
