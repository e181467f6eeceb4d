// Package vhostuser is the back-end (device) side of the vhost-user protocol
// (QEMU docs/interop/vhost-user.rst) for one virtio device served over a
// Unix-domain socket.
//
// A Backend answers one front-end connection at a time: feature and
// protocol-feature negotiation, the memory table (each region's file
// descriptor is mmap'ed MAP_SHARED and unmapped when replaced), vring setup
// (size, base, addresses, kick/call/err eventfds, enable), GET_CONFIG and
// device reset. Ring addresses arrive as front-end virtual addresses and are
// translated to guest physical addresses through the memory table; descriptor
// addresses are translated with bounds checks by the MemTable, which
// implements virtq.Memory.
//
// The device logic plugs in through the Device interface and reaches its
// queues only through Backend.With, which serialises queue use with
// reconfiguration by the front-end, so a queue never refers to unmapped
// memory.
package vhostuser
