//go:build !linux

package nsm

import (
	"context"
	"errors"
)

// Device is a [Transport] over /dev/nsm; it exists only on Linux.
type Device struct{}

var errNotLinux = errors.New("nsm: /dev/nsm is only available on Linux")

// OpenDevice always fails outside Linux.
func OpenDevice(path string) (*Device, error) { return nil, errNotLinux }

// RoundTrip always fails outside Linux.
func (d *Device) RoundTrip(ctx context.Context, req []byte) ([]byte, error) { return nil, errNotLinux }

// Close does nothing outside Linux.
func (d *Device) Close() error { return nil }
