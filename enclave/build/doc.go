// Package build turns a container image into an enclave image file (EIF)
// without a Docker daemon, reproducibly and with nitro-cli's measurements.
//
// Sources ([FromRootFS], [FromDockerArchive], [FromOCILayout],
// [FromRegistry]) are read with go-containerregistry. Image layers are
// applied in order into an in-memory tree with OCI semantics: whiteouts
// (".wh.name"), opaque directories (".wh..wh..opq"), hard links, symbolic
// links, devices, permissions and the uid/gid recorded in the layer.
// Entry paths are confined to the image root: ".." never climbs above it
// and symbolic links met in parent directories are resolved inside the
// tree, never on the host. File contents are staged in a private temporary
// directory under flat numeric names, so no layer path ever reaches the
// host file system, and the tree is written to the ramdisk straight from
// its nodes, so memory grows with the number of entries and the lengths of
// their names, not with file sizes or the depth of the tree.
//
// Layers are untrusted input. Each blob is decompressed according to its
// magic number (gzip, or zstd with a window of at most MaxZstdWindow), and
// every entry is checked before it is added: paths of at most MaxPathLen
// bytes below the root, also through symbolic links; names of at most
// MaxNameLen bytes; files of at most cpio.MaxFileSize bytes. Options.MaxImageSize
// caps the layers' decompressed data and the ramdisk they create (sparse
// files are expanded and count at their full size), Options.MaxEntries the
// number of entries. Passing a cap fails the build with a *LimitError
// (ErrTooLarge): a file that would pass it is refused before it is staged,
// and decompression stops one byte past it.
//
// The EIF is written in nitro-cli's layout (see package eif):
//
//	Kernel | Cmdline | Metadata | Ramdisk0 (bootstrap) | Ramdisk1 (customer) [| Signature]
//
// The bootstrap ramdisk holds dev/ (0755), init (0755, cloister-init) and,
// when kernel modules are given, modules/<name> (0644) plus modules/order
// (one file name per line, load order). The customer ramdisk holds rootfs/
// (the image file system, plus rootfs/{dev,run,sys,var,proc,tmp} when the
// image lacks them), and the files cmd and env (0644, one entry per line,
// "\n"-terminated) and, when the image sets them, workdir and user (one
// line each). nitro-cli ignores WORKDIR and USER; Cloister honours them
// through these two extra files, which cloister-init reads.
//
// The command is Docker's: Entrypoint followed by Cmd, where Options.Cmd
// replaces the image's Cmd. (nitro-cli uses Cmd alone, or Entrypoint when
// there is no Cmd; images whose Entrypoint and Cmd are both set therefore
// run differently under nitro-cli.) Options.Env entries override image
// variables of the same name.
//
// Reproducibility: the same inputs give a byte-identical EIF. Entries are
// sorted by path, inode numbers are sequential, every mtime and the
// metadata BuildTime are the source date epoch (Options.SourceDateEpoch,
// else $SOURCE_DATE_EPOCH, else the image's creation time, else 0), and
// the uid/gid of image files are kept from the layers. A signed image is
// reproducible except for its ECDSA signature.
//
// Without a kernel (no Options.Kernel and no blobs directory) the builder
// writes eif.NoKernelMarker as the kernel section; such images run only in
// the process sandbox.
package build
