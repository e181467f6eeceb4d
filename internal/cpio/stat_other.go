//go:build !linux

package cpio

import "io/fs"

type statInfo struct {
	ok                   bool
	dev, ino, nlink      uint64
	uid, gid             uint32
	rdevMajor, rdevMinor uint32
}

// statOf has no portable source of inode data outside Linux: hard links
// are archived as separate files and devices get number 0:0.
func statOf(fs.FileInfo) statInfo { return statInfo{} }
