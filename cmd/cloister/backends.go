package main

import (
	"log/slog"
	"os"

	"github.com/cloister/cloister/parent/backends"
)

// newBackend creates the enclave backend the configuration names; the
// backends log warnings as JSON on standard error (a monitor's
// monitor.log).
var newBackend = backends.Factory(newLogger(os.Stderr, slog.LevelWarn, "json"))
