package nsm_test

import (
	"testing"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/parent/nsmemu"
)

func newTestEmulator(t testing.TB, cfg nsmemu.Config) (*nsmemu.Emulator, *attest.Issuer) {
	t.Helper()
	if cfg.Issuer == nil {
		iss, err := attest.NewIssuer(attest.IssuerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Issuer = iss
	}
	if cfg.ModuleID == "" {
		cfg.ModuleID = "i-0123456789abcdef0-enc0123456789abcdef"
	}
	e, err := nsmemu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e, cfg.Issuer
}
