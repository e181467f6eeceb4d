package vsockdev

import "sync"

// chunkSize is the size of the pooled buffers connection data is kept in.
const chunkSize = 64 << 10

var chunkPool = sync.Pool{New: func() any {
	b := make([]byte, 0, chunkSize)
	return &b
}}

func getChunk() []byte { return (*chunkPool.Get().(*[]byte))[:0] }

func putChunk(b []byte) {
	if cap(b) != chunkSize {
		return
	}
	b = b[:0]
	chunkPool.Put(&b)
}

// chunkQueue is a FIFO of bytes held in pooled chunks. Only the front
// chunk's bytes from off are unread. A consumer may use front() outside the
// lock that guards the queue while a producer appends: appends only write
// beyond the length of the last chunk, and a chunk returns to the pool only
// when consume() finished it.
type chunkQueue struct {
	chunks [][]byte
	off    int
	n      int
}

func (q *chunkQueue) len() int { return q.n }

// write appends a copy of p.
func (q *chunkQueue) write(p []byte) {
	q.n += len(p)
	for len(p) > 0 {
		if k := len(q.chunks); k > 0 && len(q.chunks[k-1]) < cap(q.chunks[k-1]) {
			last := q.chunks[k-1]
			m := min(len(p), cap(last)-len(last))
			q.chunks[k-1] = append(last, p[:m]...)
			p = p[m:]
			continue
		}
		q.chunks = append(q.chunks, getChunk())
	}
}

// push appends a chunk (transferring its ownership to the queue).
func (q *chunkQueue) push(c []byte) {
	if len(c) == 0 {
		putChunk(c)
		return
	}
	q.n += len(c)
	q.chunks = append(q.chunks, c)
}

// front returns the unread bytes of the first chunk.
func (q *chunkQueue) front() []byte {
	if len(q.chunks) == 0 {
		return nil
	}
	return q.chunks[0][q.off:]
}

// consume drops k unread bytes from the front (k ≤ len()).
func (q *chunkQueue) consume(k int) {
	q.n -= k
	for k > 0 {
		c := q.chunks[0]
		m := min(k, len(c)-q.off)
		q.off += m
		k -= m
		if q.off == len(c) {
			q.pop()
		}
	}
}

func (q *chunkQueue) pop() {
	putChunk(q.chunks[0])
	q.chunks[0] = nil
	q.chunks = q.chunks[1:]
	q.off = 0
	if len(q.chunks) == 0 {
		q.chunks = nil
	}
}

// reset drops everything. Chunks are not returned to the pool because a
// consumer may still be using the front one.
func (q *chunkQueue) reset() {
	*q = chunkQueue{}
}

// pieces calls f on consecutive unread pieces totalling at most n bytes.
func (q *chunkQueue) pieces(n int, f func([]byte)) {
	off := q.off
	for _, c := range q.chunks {
		if n == 0 {
			return
		}
		p := c[off:]
		off = 0
		if len(p) > n {
			p = p[:n]
		}
		f(p)
		n -= len(p)
	}
}
