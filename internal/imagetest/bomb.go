package imagetest

import (
	"bytes"
	"compress/gzip"
	"fmt"
)

const mib = 1 << 20

// GzipBomb returns a gzip-compressed tar layer holding e with n zero bytes
// of content (n a multiple of 1 MiB), then the end-of-archive marker. The
// zeros are repeated gzip members of 1 MiB each (about 1 KiB compressed),
// which gzip readers decode as one stream.
func GzipBomb(e Entry, n int64) []byte {
	var out bytes.Buffer
	gz := func(p []byte) []byte {
		var b bytes.Buffer
		w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		w.Write(p)
		w.Close()
		return b.Bytes()
	}
	e.Size, e.Data = n, nil
	out.Write(gz(Header(e)))
	chunk := gz(make([]byte, mib))
	for left := n; left > 0; left -= mib {
		out.Write(chunk)
	}
	out.Write(gz(make([]byte, pad(n)+2*block)))
	return out.Bytes()
}

// ZstdBomb returns a zstd-compressed tar layer holding e with n zero
// bytes of content, then the end-of-archive marker, as one zstd frame
// written by hand: the tar header in raw blocks, the zeros in 128 KiB RLE
// blocks (4 bytes each). The frame header declares a window of 1<<windowLog
// bytes (10 ≤ windowLog ≤ 41); a decoder keeps up to that much of the
// decompressed stream in memory.
func ZstdBomb(e Entry, n int64, windowLog int) ([]byte, error) {
	if windowLog < 10 || windowLog > 41 {
		return nil, fmt.Errorf("imagetest: zstd window log %d out of range 10…41", windowLog)
	}
	e.Size, e.Data = n, nil
	head := Header(e)
	zeros := n + pad(n) + 2*block
	const maxBlock = 128 << 10
	out := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte(windowLog-10) << 3}
	blockHeader := func(last bool, typ, size int) {
		v := size<<3 | typ<<1
		if last {
			v |= 1
		}
		out = append(out, byte(v), byte(v>>8), byte(v>>16))
	}
	for len(head) > 0 {
		k := min(len(head), maxBlock)
		blockHeader(false, 0, k) // raw block
		out = append(out, head[:k]...)
		head = head[k:]
	}
	for zeros > 0 {
		k := min(zeros, maxBlock)
		zeros -= k
		blockHeader(zeros == 0, 1, int(k)) // RLE block
		out = append(out, 0)
	}
	return out, nil
}
