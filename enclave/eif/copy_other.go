//go:build !linux

package eif

import "os"

// copySection copies n bytes at off in src to dst's offset.
func copySection(dst, src *os.File, off, n int64) error {
	return copyThroughMemory(dst, src, off, n)
}
