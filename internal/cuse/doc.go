// Package cuse serves one character device from user space through Linux's
// CUSE ("character device in user space", fs/fuse/cuse.c, the cuse.ko
// module): the server opens /dev/cuse, answers the kernel's CUSE_INIT with
// the device's name, and the kernel creates /dev/<name>; from then on every
// open, close, read, write, poll and ioctl of that device arrives on the
// /dev/cuse descriptor as a FUSE request (include/uapi/linux/fuse.h) and
// is answered there.
//
// Only what a device like /dev/nsm needs is implemented, in Go without
// libfuse (no maintained pure-Go CUSE library exists: bazil.org/fuse and
// hanwen/go-fuse speak FUSE only, and the CUSE bindings found wrap libfuse
// through cgo, which cloister-init cannot link):
//
//   - CUSE_INIT: protocol 7.x with x ≥ 16 (64-bit ioctl iovecs), the
//     CUSE_UNRESTRICTED_IOCTL flag, a dynamic device number;
//   - FUSE_OPEN and FUSE_RELEASE: every open gets its own handle; forked
//     children and descriptors passed between processes share the handle of
//     the open they came from, as the kernel keeps one struct file;
//   - FUSE_IOCTL: given to the [IoctlHandler], which may answer with a
//     result and output bytes, an errno, or a retry (FUSE_IOCTL_RETRY) that
//     names the caller's memory (iovecs) the kernel must copy in before
//     asking again and may copy out with the final answer. That is how an
//     unrestricted ioctl reads and writes pointers inside its argument;
//   - FUSE_READ and FUSE_WRITE fail with EINVAL, like read(2) and write(2)
//     on a misc device that has neither; FUSE_POLL, FUSE_FLUSH and every
//     other request fail with ENOSYS, which makes the kernel use its
//     defaults (DEFAULT_POLLMASK for poll, nothing for flush);
//   - FUSE_INTERRUPT is answered with ENOSYS, which tells the kernel not to
//     send more: requests are never interrupted, only abandoned when the
//     caller is killed (the answer is then dropped by the kernel).
//
// Requests are decoded strictly by [ParseRequest] (lengths checked against
// the header and the opcode's fixed part before anything is used) and
// handled concurrently, each ioctl in its own goroutine.
package cuse
