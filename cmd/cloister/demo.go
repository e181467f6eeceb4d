package main

import (
	"context"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/cmd/cloister/internal/demo"
	"github.com/cloister/cloister/internal/buildinfo"
	"github.com/cloister/cloister/parent/daemon"
	"github.com/cloister/cloister/parent/doctor"
)

func init() { register(newDemoCmd) }

func newDemoCmd() *cobra.Command {
	var cfg demo.Config
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show the whole mission on this machine: measure, attest, release a key",
		Long: `demo builds the kms-secret example's enclave image, starts the parent daemon,
the key service (embedded store) and the attestation verifier in this process,
creates a key whose policy pins the image's PCR0, seals a secret, runs the
enclave, and narrates: the measurements, the enclave's attestation verified,
the key released to the enclave, and the parent — with the same credentials
but no attestation — refused. Everything is cleaned up afterwards; the exit
status is non-zero if any step fails. It needs root (sandbox and microVM
backends both do). With --backend qemu and no --kernel it uses the kernel
cloister doctor recommends for this host. scripts/demo.sh builds what it
needs and runs it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.Init, err = findInit(cfg.Init); err != nil {
				return withExit(1, err)
			}
			cfg.NewBackend = newBackend
			cfg.Out = cmd.OutOrStdout()
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			if cfg.Backend == "qemu" {
				chooseDemoKernel(ctx, &cfg)
			}
			cfg.MonitorBinary, _ = daemon.FindMonitorBinary(ctx, buildinfo.String())
			if err := demo.Run(ctx, cfg); err != nil {
				return withExit(1, err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Backend, "backend", "sandbox", "enclave backend: sandbox or qemu")
	f.StringVar(&cfg.Init, "init", "", "the static cloister-init binary (default: as build-enclave finds it)")
	f.StringVar(&cfg.App, "app", "", "the kms-secret example's enclave program (static)")
	f.StringVar(&cfg.Kernel, "kernel", "", "kernel image for the qemu backend (default: the one cloister doctor recommends)")
	f.StringVar(&cfg.ModulesDir, "kernel-modules-dir", "", "the kernel's /lib/modules/<version> directory (qemu backend; default: the one matching /boot/vmlinuz-<version>)")
	f.BoolVar(&cfg.Keep, "keep", false, "keep the working directory (image, state, logs) for inspection")
	_ = cmd.MarkFlagRequired("app")
	return cmd
}

// chooseDemoKernel fills in the microVM's kernel the user did not name:
// the modules directory of a /boot/vmlinuz-<release> kernel, or the kernel
// cloister doctor recommends for this host's QEMU.
func chooseDemoKernel(ctx context.Context, cfg *demo.Config) {
	if cfg.Kernel != "" {
		if rel, ok := strings.CutPrefix(cfg.Kernel, "/boot/vmlinuz-"); ok && cfg.ModulesDir == "" {
			cfg.ModulesDir = "/lib/modules/" + rel
		}
		return
	}
	k := doctor.EnclaveKernel(ctx, doctor.Host{})
	cfg.Kernel, cfg.ModulesDir = k.Path, k.ModulesDir
	switch {
	case k.Hazard != "":
		cfg.KernelNote = "warning: " + k.Hazard
	case k.PassedOver != "":
		cfg.KernelNote = "passed over " + k.PassedOver
	}
}
