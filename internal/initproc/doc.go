// Package initproc is cloister-init, the first process of every enclave.
//
// In a VM (a Nitro enclave or a QEMU microVM; PID 1 with CLOISTER_WORLD
// unset) it implements the Nitro init contract: it mounts devtmpfs and opens
// the console, loads the kernel modules listed in /modules/order, sends the
// boot heartbeat to the parent (vsock CID 3, port 9000), gives a VM without
// a security module device (a microVM) a /dev/nsm served through CUSE that
// forwards to the parent's emulated module (see package nsmcuse), reads the image's
// /cmd, /env, /workdir and /user, moves /rootfs onto / and chroots into it,
// mounts the usual pseudo file systems, runs the application, reaps zombies,
// forwards termination signals and, when the application ends, reports its
// status on the console and reboots, which ends the enclave.
//
// Ending the VM: init calls reboot(LINUX_REBOOT_CMD_RESTART), Nitro's
// RB_AUTOBOOT, because that is what terminates a Nitro enclave. In QEMU the
// VM must run with -no-reboot and the kernel with reboot=t (triple fault):
// the EIF's own reboot=k hangs on the microvm machine, which has no
// keyboard controller. The heartbeat uses raw sockets rather than package
// net so that the binary is statically linked even when cgo is enabled.
//
// In the process sandbox (CLOISTER_WORLD=sandbox) the launcher has already
// built the root file system, so init only sends the heartbeat over the Unix
// socket that emulates vsock, reads /.cloister/{cmd,env,workdir,user}, runs
// the application as the image's user with every capability dropped, and
// exits with the application's status.
//
// The application is started through a short re-execution of init itself
// (see [Launch]): the child switches user, drops capabilities when asked and
// then execs the application, so the exact order of these steps does not
// depend on what os.StartProcess supports.
//
// Every step is reachable without being PID 1: [Config] carries a root
// directory and seams for the system calls ([Sys]) and the heartbeat dialer,
// so tests run the parsing, the decisions and the whole sandbox flow as an
// ordinary child process.
package initproc
