package main

import (
	"context"
	"log/slog"
	"sync"

	"github.com/cloister/cloister/internal/sdnotify"
)

// notify tells a service manager (systemd, Type=notify) about state;
// outside one it does nothing.
func notify(logger *slog.Logger, state string) {
	if _, err := sdnotify.Notify(state); err != nil {
		logger.Warn("cannot notify the service manager", "state", state, "err", err)
	}
}

// notifyStopping sends STOPPING=1 as soon as ctx ends (the service starts
// shutting down) or, at the latest, when the returned function is called
// (the service stopped for another reason).
func notifyStopping(ctx context.Context, logger *slog.Logger) func() {
	var once sync.Once
	send := func() { once.Do(func() { notify(logger, sdnotify.Stopping) }) }
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			send()
		case <-done:
		}
	}()
	return func() { close(done); send() }
}
