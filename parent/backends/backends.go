// Package backends creates an enclave backend by the name the daemon's
// configuration gives it: sandbox, qemu or nitro. The cloister command and
// the lean monitor executable (cmd/cloister-monitor) share it, so the
// daemon and its monitors always build the same backend from the same
// configuration.
package backends

import (
	"fmt"
	"log/slog"

	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/daemon"
	"github.com/cloister/cloister/parent/nitro"
	"github.com/cloister/cloister/parent/qemu"
	"github.com/cloister/cloister/parent/sandbox"
)

// Factory returns the daemon.BackendFactory that creates the backend
// cfg.Backend names ("" is sandbox); the qemu and nitro backends log to
// logger (nil discards). The sandbox and qemu backends create their
// cgroups under cfg.CgroupParent (after the daemon resolved "auto", see
// daemon.ResolveCgroupParent).
func Factory(logger *slog.Logger) daemon.BackendFactory {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return func(cfg daemon.Config) (backend.Backend, error) {
		switch cfg.Backend {
		case "", "sandbox":
			return &sandbox.Backend{CgroupParent: cfg.CgroupParent}, nil
		case "qemu":
			return &qemu.Backend{Binary: cfg.QEMU.Binary, Accel: cfg.QEMU.Accel, Machine: cfg.QEMU.Machine,
				CgroupParent: cfg.CgroupParent, Logger: logger}, nil
		case "nitro":
			return nitro.New(nitro.Config{Logger: logger}), nil
		}
		return nil, fmt.Errorf("backends: unknown backend %q: use sandbox, qemu or nitro", cfg.Backend)
	}
}
