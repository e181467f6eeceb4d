package backend

import (
	"context"
	"time"

	"github.com/cloister/cloister/internal/cgroups"
)

// TerminateGrace is how long an enclave's process (sandbox init, QEMU) may
// take to end on SIGTERM before it is killed.
const TerminateGrace = 5 * time.Second

// cgroupTimeout bounds killing and removing an enclave's cgroup.
const cgroupTimeout = 10 * time.Second

// TerminateProcess ends an enclave embodied by a host process, whose
// instance closes done once it has ended and released everything: it
// calls term (SIGTERM), waits up to grace for done, then calls kill and
// waits for done or ctx. It returns nil at once when done is already
// closed, and kill's error if kill fails.
func TerminateProcess(ctx context.Context, done <-chan struct{}, grace time.Duration, term, kill func() error) error {
	select {
	case <-done:
		return nil
	default:
	}
	_ = term()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	if err := kill(); err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RemoveCgroup kills everything left in g and removes it, within its own
// timeout: it runs when a launch failed or an enclave ended, whatever
// became of the launch's ctx.
func RemoveCgroup(g *cgroups.Group) error {
	ctx, cancel := context.WithTimeout(context.Background(), cgroupTimeout)
	defer cancel()
	return g.Remove(ctx)
}

// CleanupCgroup kills and removes what is left of enclave id's cgroup
// under parent ("" means "cloister") after its monitor died: the cgroup
// part of [Cleaner.Cleanup] for backends whose enclave lives in one.
func CleanupCgroup(ctx context.Context, parent, id string) error {
	mgr, err := cgroups.New(cgroups.Config{Parent: parent})
	if err != nil {
		return err
	}
	_, err = mgr.Cleanup(ctx, id)
	return err
}
