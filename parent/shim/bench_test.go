package shim_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/parent/parenttest"
)

// BenchmarkLaunch is container create → enclave RUNNING: through
// containerd (`ctr run -d` with the shim: containerd, the shim's start
// and Create — the image cached by content — and Start, which returns
// once the daemon reports RUNNING) against `cloister run-enclave` of the
// same image straight to the daemon. Teardown is not timed. Compare the
// two ns/op for the shim's overhead.
//
//	go test -run '^$' -bench BenchmarkLaunch -benchtime 20x ./parent/shim
func BenchmarkLaunch(b *testing.B) {
	n := startNode(b)
	rootfs := n.rootfs("rootfs")
	// Warm the image cache and find the image.
	if _, _, err := n.ctr("run", "-d", "--runtime", runtimeType, "--rootfs", rootfs, "warm", "/bin/enclaveapp", "echo"); err != nil {
		b.Fatal(err)
	}
	eif := n.describe("warm").EIFPath
	if _, _, err := n.ctr("task", "kill", "-s", "SIGKILL", "warm"); err != nil {
		b.Fatal(err)
	}
	if es, _ := filepath.Glob(filepath.Join(n.cache, "*.eif")); len(es) != 1 || eif == "" {
		b.Fatalf("cache %v, enclave image %q", es, eif)
	}
	cleanup := func(id string) {
		b.Helper()
		for {
			if out, _, _ := n.ctr("task", "ls"); !containsRunning(out) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		n.ctr("task", "delete", id)
		if _, _, err := n.ctr("container", "rm", id); err != nil {
			b.Fatal(err)
		}
	}
	cleanup("warm")

	b.Run("containerd", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			id := "bench" + strconv.Itoa(i)
			if _, _, err := n.ctr("run", "-d", "--runtime", runtimeType, "--rootfs", rootfs, id, "/bin/enclaveapp", "echo"); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if _, _, err := n.ctr("task", "kill", "-s", "SIGKILL", id); err != nil {
				b.Fatal(err)
			}
			cleanup(id)
			b.StartTimer()
		}
	})
	b.Run("run-enclave", func(b *testing.B) {
		cli := parenttest.Cloister(b)
		for i := 0; b.Loop(); i++ {
			name := "direct" + strconv.Itoa(i)
			cmd := exec.Command(cli, "run-enclave", "--eif-path", eif, "--memory", "256", "--cpu-count", "1", "--enclave-name", name)
			cmd.Env = append(cmd.Environ(), "CLOISTER_SOCKET="+n.d.Socket)
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("run-enclave: %v\n%s", err, out)
			}
			b.StopTimer()
			if _, err := n.d.Client.Terminate(context.Background(), name); err != nil {
				b.Fatal(fmt.Errorf("terminate: %w", err))
			}
			b.StartTimer()
		}
	})
}

func containsRunning(taskList string) bool {
	return strings.Contains(taskList, "RUNNING")
}
