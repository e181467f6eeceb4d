// Package cgroups gives each sandboxed enclave its own control group: a
// memory limit without swap, dedicated CPUs, a process limit, an optional
// CPU quota, a device allow-list (v1), and the means to kill everything in
// it and remove it afterwards.
//
// It works on the three layouts Linux hosts use, detected with statfs(2):
//
//   - v1 (legacy): one hierarchy per controller under /sys/fs/cgroup/<ctrl>;
//   - hybrid: the v1 hierarchies plus a cgroup2 mount at
//     /sys/fs/cgroup/unified (typically holding no useful controller, as
//     on Cloister's CI hosts); the v1 hierarchies are used;
//   - v2 (unified): /sys/fs/cgroup is cgroup2.
//
// Groups live under a common parent, by default "cloister", so
// /sys/fs/cgroup/memory/cloister/<id> on v1 and /sys/fs/cgroup/cloister/<id>
// on v2. [Manager.Cleanup] removes leftovers after a daemon restart.
//
// The process to confine must be attached with [Group.Attach] before it
// starts running untrusted code (the sandbox launcher attaches its child
// while the child waits on a pipe).
package cgroups
