package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/daemon"
	"github.com/cloister/cloister/parent/nitro"
	"github.com/cloister/cloister/parent/qemu"
	"github.com/cloister/cloister/parent/sandbox"
)

// newBackend creates the enclave backend the configuration names.
func newBackend(cfg daemon.Config) (backend.Backend, error) {
	switch cfg.Backend {
	case "", "sandbox":
		return &sandbox.Backend{}, nil
	case "qemu":
		return &qemu.Backend{Binary: cfg.QEMU.Binary, Accel: cfg.QEMU.Accel,
			Logger: newLogger(os.Stderr, slog.LevelWarn, "json")}, nil
	case "nitro":
		return nitro.New(nitro.Config{Logger: newLogger(os.Stderr, slog.LevelWarn, "json")}), nil
	}
	return nil, fmt.Errorf("unknown backend %q: use sandbox, qemu or nitro", cfg.Backend)
}
