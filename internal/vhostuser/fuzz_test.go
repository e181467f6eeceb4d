package vhostuser

import (
	"context"
	"encoding/binary"
	"testing"
	"time"
)

// FuzzVhostUserMessage writes an arbitrary byte stream (one or more
// messages, no file descriptors) to a back-end. It must neither panic nor
// hang: ServeConn returns once the stream ends, and replies are well-formed.
func FuzzVhostUserMessage(f *testing.F) {
	msg := func(req, flags uint32, payload []byte) []byte {
		b := make([]byte, headerSize+len(payload))
		header{Request: req, Flags: FlagVersion | flags, Size: uint32(len(payload))}.encode(b)
		copy(b[headerSize:], payload)
		return b
	}
	cfg := make([]byte, 12+8)
	binary.LittleEndian.PutUint32(cfg[4:], 8)
	var handshake []byte
	for _, m := range [][]byte{
		msg(ReqGetFeatures, 0, nil),
		msg(ReqGetProtocolFeatures, 0, nil),
		msg(ReqSetProtocolFeatures, 0, u64Bytes(ProtocolReplyAck|ProtocolConfig)),
		msg(ReqSetOwner, FlagNeedReply, nil),
		msg(ReqGetConfig, 0, cfg),
		msg(ReqSetFeatures, FlagNeedReply, u64Bytes(FeatureVersion1|FeatureProtocolFeatures)),
		msg(ReqSetVringNum, 0, state(1, 256)),
		msg(ReqSetVringBase, 0, state(1, 0)),
		msg(ReqSetVringAddr, 0, make([]byte, vringAddrSize)),
		msg(ReqSetVringCall, 0, u64Bytes(1|vringNoFD)),
		msg(ReqSetVringKick, 0, u64Bytes(1|vringNoFD)),
		msg(ReqSetVringEnable, FlagNeedReply, state(1, 1)),
		msg(ReqGetVringBase, 0, state(1, 0)),
		msg(ReqResetDevice, 0, nil),
		msg(ReqGetQueueNum, 0, nil),
	} {
		f.Add(m)
		handshake = append(handshake, m...)
	}
	f.Add(handshake)
	f.Add(msg(ReqSetMemTable, 0, memTable(Region{Size: 4096})))
	f.Add(msg(ReqGetStatus, 0, nil))

	f.Fuzz(func(t *testing.T, stream []byte) {
		a, b := socketpair(t)
		defer a.Close()
		done := make(chan error, 1)
		go func() { done <- New(newFakeDevice(), nil).ServeConn(context.Background(), b) }()
		// Read replies concurrently so the back-end never blocks writing.
		replies := make(chan []byte, 1)
		go func() {
			var all []byte
			buf := make([]byte, 4096)
			for {
				n, err := a.Read(buf)
				all = append(all, buf[:n]...)
				if err != nil {
					replies <- all
					return
				}
			}
		}()
		_, _ = a.Write(stream)
		_ = a.CloseWrite()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("ServeConn did not return after the stream ended")
		}
		all := <-replies
		for len(all) > 0 {
			if len(all) < headerSize {
				t.Fatalf("truncated reply header %x", all)
			}
			h := parseHeader(all)
			if h.Flags != FlagVersion|FlagReply || uint64(len(all)) < headerSize+uint64(h.Size) {
				t.Fatalf("malformed reply %+v", h)
			}
			all = all[headerSize+h.Size:]
		}
	})
}
