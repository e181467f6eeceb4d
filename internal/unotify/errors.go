package unotify

import "errors"

// Errors returned by this package; concrete errors wrap one of them.
var (
	// ErrListener reports a failure of the seccomp listener itself (an
	// ioctl the kernel refused for a reason other than the caller).
	ErrListener = errors.New("unotify: seccomp listener failed")
	// ErrClosed is returned by Receive once the Listener is closed.
	ErrClosed = errors.New("unotify: listener closed")
	// ErrNoTasks is returned by Receive once no task uses the filter any
	// more: every process of the sandbox has ended.
	ErrNoTasks = errors.New("unotify: no task uses the filter any more")
	// ErrGone reports that a notification is no longer valid: its caller
	// was interrupted by a signal or died before the answer.
	ErrGone = errors.New("unotify: the notified call is gone (caller interrupted or dead)")
	// ErrUnsupported reports a platform without seccomp user notification.
	ErrUnsupported = errors.New("unotify: seccomp user notification needs Linux")
	// ErrHost reports a host (or container) on which this process cannot
	// supervise a sandbox: a system call the supervisor needs is missing
	// or refused (see CheckHost).
	ErrHost = errors.New("unotify: this process cannot supervise a sandbox")
)
