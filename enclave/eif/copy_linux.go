package eif

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// copySection copies n bytes at off in src to dst's offset with
// copy_file_range, falling back to a copy through memory where the kernel
// refuses (files on different kinds of file system).
func copySection(dst, src *os.File, off, n int64) error {
	roff := off
	for n > 0 {
		w, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), nil, int(min(n, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
				return copyThroughMemory(dst, src, roff, n)
			}
			return err
		}
		if w == 0 {
			return errors.New("unexpected end of the image")
		}
		n -= int64(w)
	}
	return nil
}
