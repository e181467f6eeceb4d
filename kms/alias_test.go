package kms

import (
	"strings"
	"testing"
)

func TestAliasNameOK(t *testing.T) {
	for name, want := range map[string]bool{
		"alias/my-key":                      true,
		"alias/a":                           true,
		"alias/A_b/c-9":                     true,
		"alias/" + strings.Repeat("x", 250): true,
		"alias/" + strings.Repeat("x", 251): false,
		"alias/":                            false,
		"my-key":                            false,
		"alias/bad name":                    false,
		"alias/é":                           false,
		"ALIAS/x":                           false,
	} {
		if got := aliasNameOK(name); got != want {
			t.Errorf("aliasNameOK(%q) = %v, want %v", name, got, want)
		}
	}
}
