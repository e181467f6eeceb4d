//go:build !linux

package hybrid

import (
	"context"
	"errors"
	"net"
	"os"
)

// dialGuest needs O_PATH and /proc/self/fd, which only Linux has (as only
// Linux has the sandbox world): elsewhere it refuses.
func dialGuest(ctx context.Context, dir string, root *os.File, name string) (*net.UnixConn, error) {
	return nil, errors.New("hybrid: connecting to enclave listeners without following links needs Linux")
}
