//go:build linux

package cpio

import (
	"io/fs"
	"syscall"

	"golang.org/x/sys/unix"
)

type statInfo struct {
	ok                   bool
	dev, ino, nlink      uint64
	uid, gid             uint32
	rdevMajor, rdevMinor uint32
}

func statOf(fi fs.FileInfo) statInfo {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return statInfo{}
	}
	return statInfo{
		ok:        true,
		dev:       st.Dev,
		ino:       st.Ino,
		nlink:     uint64(st.Nlink),
		uid:       st.Uid,
		gid:       st.Gid,
		rdevMajor: unix.Major(st.Rdev),
		rdevMinor: unix.Minor(st.Rdev),
	}
}
