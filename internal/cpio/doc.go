// Package cpio reads and writes "newc" cpio archives (magic "070701"), the
// format the Linux kernel unpacks as an initramfs and the format of every
// ramdisk section of an enclave image file (EIF).
//
// The [Writer] is low level and deterministic: it writes exactly the headers
// it is given. [WriteFiles] and [AddTree] build on it to produce
// reproducible archives: entries sorted by path, inode numbers assigned
// sequentially, link counts computed, hard links encoded as newc does (every
// link shares one inode and the data travels with the last link), and one
// fixed modification time.
//
// The [Reader] is meant for untrusted input: every field is validated, name
// and data sizes are bounded by [Limits], and malformed input yields an
// error wrapping [ErrFormat] or [ErrLimit], never a panic.
package cpio
