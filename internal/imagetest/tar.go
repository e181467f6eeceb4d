// Package imagetest builds image fixtures for the image builder's tests,
// hostile ones included, without ever expanding them:
//
//   - tar layers written byte by byte ([Tar]), so they can hold what
//     archive/tar's writer refuses to write: GNU sparse PAX records
//     ([Sparse]) and names of any length;
//   - compression bombs ([GzipBomb], [ZstdBomb]): a tar header followed by a
//     long run of zeros, stored as repeated gzip members or zstd frames, so
//     a fixture of a few megabytes decompresses to gigabytes;
//   - `docker save` archives and OCI layouts assembled by hand
//     ([WriteDockerArchive], [WriteOCILayout]), so that writing a fixture
//     never decompresses or hashes a bomb's content.
//
// It is test support code; nothing outside tests imports it.
package imagetest

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Tar entry types (the typeflag byte).
const (
	TypeReg     = '0'
	TypeLink    = '1'
	TypeSymlink = '2'
	TypeDir     = '5'
)

// Entry is one tar entry.
type Entry struct {
	Name     string
	Typeflag byte // default TypeReg
	Mode     int64
	Linkname string
	// Size is the header's size field; when zero it is len(Data).
	Size int64
	// Data is the entry's stored content (Size bytes; shorter Data is
	// padded with zeros).
	Data []byte
	// PAX holds extra PAX records (e.g. GNU.sparse.*), written in sorted
	// key order in a PAX extended header before the entry.
	PAX map[string]string
}

func (e Entry) size() int64 {
	if e.Size != 0 {
		return e.Size
	}
	return int64(len(e.Data))
}

const block = 512

// Tar returns an uncompressed tar stream holding entries and the
// end-of-archive marker. Names, link names and sizes that do not fit the
// ustar header go into PAX records.
func Tar(entries ...Entry) []byte {
	var b bytes.Buffer
	for _, e := range entries {
		b.Write(Header(e))
		data := e.Data
		if n := e.size(); int64(len(data)) < n {
			data = append(append([]byte(nil), data...), make([]byte, n-int64(len(data)))...)
		}
		b.Write(data)
		b.Write(make([]byte, pad(int64(len(data)))))
	}
	b.Write(make([]byte, 2*block))
	return b.Bytes()
}

func pad(n int64) int64 { return (block - n%block) % block }

// Header returns the header blocks of e (a PAX extended header first when
// needed), without its data.
func Header(e Entry) []byte {
	if e.Typeflag == 0 {
		e.Typeflag = TypeReg
	}
	if e.Mode == 0 {
		e.Mode = 0o644
		if e.Typeflag == TypeDir {
			e.Mode = 0o755
		}
	}
	pax := map[string]string{}
	for k, v := range e.PAX {
		pax[k] = v
	}
	name, link, size := e.Name, e.Linkname, e.size()
	if len(name) > 100 {
		pax["path"], name = name, "long-name"
	}
	if len(link) > 100 {
		pax["linkpath"], link = link, "long-link"
	}
	if size >= 1<<33 {
		pax["size"] = strconv.FormatInt(size, 10)
		size = 0
	}
	var b bytes.Buffer
	if len(pax) > 0 {
		rec := paxRecords(pax)
		b.Write(ustar("PaxHeaders/entry", 'x', 0o644, int64(len(rec)), ""))
		b.Write(rec)
		b.Write(make([]byte, pad(int64(len(rec)))))
	}
	b.Write(ustar(name, e.Typeflag, e.Mode, size, link))
	return b.Bytes()
}

// paxRecords encodes records as "%d key=value\n", the length counting itself.
func paxRecords(m map[string]string) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // reproducible fixtures
	var b bytes.Buffer
	for _, k := range keys {
		rest := " " + k + "=" + m[k] + "\n"
		n := len(rest) + 1
		for len(strconv.Itoa(n))+len(rest) != n {
			n++
		}
		b.WriteString(strconv.Itoa(n) + rest)
	}
	return b.Bytes()
}

// ustar encodes one 512-byte ustar header block.
func ustar(name string, typ byte, mode, size int64, link string) []byte {
	h := make([]byte, block)
	copy(h[0:100], name)
	octal(h[100:108], mode)
	octal(h[108:116], 0)
	octal(h[116:124], 0)
	octal(h[124:136], size)
	octal(h[136:148], 0)
	h[156] = typ
	copy(h[157:257], link)
	copy(h[257:263], "ustar\x00")
	copy(h[263:265], "00")
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func octal(dst []byte, v int64) {
	s := strconv.FormatInt(v, 8)
	copy(dst, strings.Repeat("0", len(dst)-1-len(s))+s)
}

// Sparse returns a regular-file entry in GNU sparse PAX format 0.1 whose
// expanded size is realSize: one byte of data at the end, the rest a hole.
// archive/tar expands it to realSize bytes when read.
func Sparse(name string, realSize int64) Entry {
	return Entry{
		Name: "GNUSparseFile.0/" + name,
		Data: []byte{'x'},
		PAX: map[string]string{
			"GNU.sparse.major":     "0",
			"GNU.sparse.minor":     "1",
			"GNU.sparse.name":      name,
			"GNU.sparse.size":      strconv.FormatInt(realSize, 10),
			"GNU.sparse.numblocks": "1",
			"GNU.sparse.map":       strconv.FormatInt(realSize-1, 10) + ",1",
		},
	}
}

// DeepPath returns a path of depth directories named "d" followed by the
// file name "f" ("d/d/…/d/f"), 2*depth+1 bytes long.
func DeepPath(depth int) string { return strings.Repeat("d/", depth) + "f" }

// SymlinkChain returns entries that reach a directory about hops*depth
// levels deep through short names: symbolic link l1 at the root points
// depth levels down ("d/d/…/d"), l2 inside that directory (entry name
// "l1/l2") points depth levels further, and so on; the last entry is the
// file "l1/l2/…/l<hops>/f".
func SymlinkChain(hops, depth int) []Entry {
	target := strings.TrimSuffix(strings.Repeat("d/", depth), "/")
	var out []Entry
	prefix := ""
	for i := 1; i <= hops; i++ {
		name := prefix + "l" + strconv.Itoa(i)
		out = append(out, Entry{Name: name, Typeflag: TypeSymlink, Mode: 0o777, Linkname: target})
		prefix = name + "/"
	}
	return append(out, Entry{Name: prefix + "f", Data: []byte("x")})
}

// ManyFiles returns n empty files "f0" … "f<n-1>".
func ManyFiles(n int) []Entry {
	out := make([]Entry, n)
	for i := range out {
		out[i] = Entry{Name: "f" + strconv.Itoa(i)}
	}
	return out
}
