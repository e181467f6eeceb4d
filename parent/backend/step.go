package backend

import "context"

// StepError is a launch that failed at one named step, after what the
// earlier steps created was released. Every backend's Launch fails with one.
type StepError struct {
	// Backend is the backend whose launch failed.
	Backend Kind
	// Step names the failed step, e.g. "check image", "create cgroup",
	// "start qemu", "NE_ADD_VCPU cpu 3".
	Step string
	Err  error
}

// Error returns "<backend>: launch failed at <step>: <cause>".
func (e *StepError) Error() string {
	return string(e.Backend) + ": launch failed at " + e.Step + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *StepError) Unwrap() error { return e.Err }

// Step is one named step of a launch (firecracker-go-sdk's handlers).
type Step struct {
	Name string
	// Do performs the step.
	Do func(ctx context.Context) error
	// Undo releases what Do created. It runs when Do or a later step
	// fails, so it must cope with a Do that got only part of the way; nil
	// means there is nothing to release.
	Undo func()
}

// RunSteps runs steps in order. When one fails it runs the Undo of that
// step and of every earlier one, last first, and returns a [*StepError]
// naming the failed step. It checks nothing between steps: a step that
// blocks honours ctx itself.
func RunSteps(ctx context.Context, kind Kind, steps []Step) error {
	for i, s := range steps {
		if err := s.Do(ctx); err != nil {
			for j := i; j >= 0; j-- {
				if u := steps[j].Undo; u != nil {
					u()
				}
			}
			return &StepError{Backend: kind, Step: s.Name, Err: err}
		}
	}
	return nil
}
