// Command attack is the application the sandbox integration tests run
// inside the sandbox. Each invocation performs one probe or attack, chosen
// by its first argument, and prints "RESULT key=value" lines on standard
// output. It never connects anywhere: a socket that is (wrongly) created is
// closed at once.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func result(key string, v any) { fmt.Printf("RESULT %s=%v\n", key, v) }

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	if e, ok := err.(syscall.Errno); ok {
		switch e {
		case syscall.EPERM:
			return "EPERM"
		case syscall.EACCES:
			return "EACCES"
		case syscall.ENOENT:
			return "ENOENT"
		case syscall.EAGAIN:
			return "EAGAIN"
		case syscall.ENOSYS:
			return "ENOSYS"
		}
		return fmt.Sprintf("errno%d", int(e))
	}
	if pe, ok := err.(*os.PathError); ok {
		return errName(pe.Err)
	}
	if se, ok := err.(*os.SyscallError); ok {
		return errName(se.Err)
	}
	return err.Error()
}

func socket(domain, typ int) error {
	fd, err := syscall.Socket(domain, typ, 0)
	if err == nil {
		syscall.Close(fd)
	}
	return err
}

func statusField(name string) string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unreadable"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	return "absent"
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: attack MODE")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "hello":
		host, _ := os.Hostname()
		wd, _ := os.Getwd()
		result("hello", "yes")
		result("uid", os.Getuid())
		result("hostname", host)
		result("cwd", wd)
		result("world", os.Getenv("CLOISTER_WORLD"))
		result("vsockdir", os.Getenv("CLOISTER_VSOCK_DIR"))
		result("cid", os.Getenv("CLOISTER_CID"))
		result("pid", os.Getpid())
	case "exit":
		n, _ := strconv.Atoi(os.Args[2])
		os.Exit(n)
	case "sockets":
		result("inet", errName(socket(syscall.AF_INET, syscall.SOCK_STREAM)))
		result("inet6", errName(socket(syscall.AF_INET6, syscall.SOCK_DGRAM)))
		result("vsock", errName(socket(40 /* AF_VSOCK */, syscall.SOCK_STREAM)))
		result("netlink", errName(socket(syscall.AF_NETLINK, syscall.SOCK_RAW)))
		result("packet", errName(socket(syscall.AF_PACKET, syscall.SOCK_RAW)))
		result("unix", errName(socket(syscall.AF_UNIX, syscall.SOCK_STREAM)))
	case "files":
		_, err := os.ReadFile("/etc/shadow")
		result("shadow", errName(err))
		_, err = os.ReadFile(os.Args[2]) // a host file the test created
		result("hostfile", errName(err))
		cmd, err := os.ReadFile("/proc/1/cmdline")
		result("proc1cmdline", strings.ReplaceAll(string(cmd), "\x00", " ")+errNameIf(err))
		env, _ := os.ReadFile("/proc/1/environ")
		result("proc1world", strings.Contains(string(env), "CLOISTER_WORLD=sandbox"))
		ents, _ := os.ReadDir("/proc")
		n := 0
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				n++
			}
		}
		result("pids", n)
		_, err = os.Stat("/.oldroot")
		result("oldroot", errName(err))
		_, err = os.Stat("/sys/fs/cgroup")
		result("sys", errName(err))
		m, _ := filepath.Glob("/dev/*")
		result("dev", strings.Join(m, ","))
		_, err = os.OpenFile("/dev/null", os.O_WRONLY, 0)
		result("devnull", errName(err))
		cg, _ := os.ReadFile("/proc/self/cgroup")
		result("cgroupns", strings.Contains(string(cg), "cloister"))
	case "oom":
		mib, _ := strconv.Atoi(os.Args[2])
		var keep [][]byte
		for i := 0; i < mib; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		result("allocated", len(keep))
	case "sleep":
		if len(os.Args) > 2 && os.Args[2] == "announce" {
			result("sleeping", "yes")
		}
		time.Sleep(time.Hour)
	case "forkbomb":
		self, _ := os.Executable()
		n := 0
		var err error
		for n < 10000 {
			_, err = syscall.ForkExec(self, []string{"attack", "sleep"}, &syscall.ProcAttr{})
			if err != nil {
				break
			}
			n++
		}
		result("forks", n)
		result("forkerr", errName(err))
	case "ptrace":
		_, _, e := syscall.RawSyscall(syscall.SYS_PTRACE, syscall.PTRACE_ATTACH, 1, 0)
		result("ptrace", errName(errnoErr(e)))
	case "mount":
		result("mount", errName(syscall.Mount("tmpfs", "/tmp", "tmpfs", 0, "")))
		result("unshare", errName(syscall.Unshare(syscall.CLONE_NEWUSER)))
		result("chroot", errName(syscall.Chroot("/tmp")))
	case "netif":
		b, err := os.ReadFile("/proc/net/dev")
		var names []string
		for _, line := range strings.Split(string(b), "\n") {
			if k, _, ok := strings.Cut(line, ":"); ok && !strings.Contains(k, "|") {
				names = append(names, strings.TrimSpace(k))
			}
		}
		result("interfaces", strings.Join(names, ",")+errNameIf(err))
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
		if err != nil {
			result("lo", errName(err))
			break
		}
		var ifr [40]byte
		copy(ifr[:], "lo")
		_, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr[0])))
		if e != 0 {
			result("lo", errName(e))
		} else {
			flags := uint16(ifr[16]) | uint16(ifr[17])<<8
			result("lo_up", flags&syscall.IFF_UP != 0)
		}
	case "caps":
		for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"} {
			result(k, statusField(k))
		}
	default:
		fmt.Fprintln(os.Stderr, "attack: unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func errNameIf(err error) string {
	if err == nil {
		return ""
	}
	return "(" + errName(err) + ")"
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
