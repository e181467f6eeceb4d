//go:build !linux

package hybrid

import "net"

func spliceUnix(dst, src *net.UnixConn) (int64, bool, error) { return 0, false, nil }
