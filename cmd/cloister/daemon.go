package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/internal/buildinfo"
	"github.com/cloister/cloister/internal/sdnotify"
	"github.com/cloister/cloister/parent/daemon"
	"github.com/cloister/cloister/parent/daemon/metrics"
	"github.com/cloister/cloister/parent/nitro/allocator"
	"github.com/cloister/cloister/parent/qemu"
)

func init() {
	register(newDaemonCmd)
	register(newMonitorCmd)
}

func newDaemonCmd() *cobra.Command {
	var backendName, configFile, socket, stateDir, cgroupParent, metricsAddr string
	var logf *logFlags
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the parent daemon that launches and supervises enclaves",
		Long: `daemon runs the Cloister parent daemon. It carves CPUs and memory out of this
host into enclaves, launches them with the chosen backend, gives each enclave
its heartbeat listener, emulated security module, kept console log and egress
proxy, and serves an HTTP/JSON API on a Unix socket (docs/daemon-api.yaml)
that the other cloister subcommands use.

Backends: sandbox (default; namespaces, seccomp and cgroups, any Linux host),
qemu (a microVM per enclave; KVM when /dev/kvm is usable, else TCG) and nitro
(real Nitro Enclaves through /dev/nitro_enclaves).

The configuration file (YAML) sets memory_mib, cpu_count or cpu_pool,
heartbeat_timeout, egress proxies and their allowlist, cgroup_parent and
metrics_addr; see docs/daemon.md. Running enclaves survive a daemon restart.

Monitors (one process per enclave) run as cloister-monitor when it is
installed next to this executable or in ../lib/cloister and is of the same
build, else as this executable.

GET /healthz and GET /metrics (Prometheus) are served on the API socket and,
with --metrics-addr, on a TCP address. Under systemd (Type=notify) the daemon
reports READY=1 once it serves its API and STOPPING=1 when it stops.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg daemon.Config
			if configFile != "" {
				var err error
				if cfg, err = daemon.LoadConfig(configFile); err != nil {
					return withExit(1, err)
				}
			}
			if cmd.Flags().Changed("backend") || cfg.Backend == "" {
				cfg.Backend = backendName
			}
			if socket != "" {
				cfg.Socket = socket
			}
			if stateDir != "" {
				cfg.StateDir = stateDir
			}
			if cgroupParent != "" {
				cfg.CgroupParent = cgroupParent
			}
			if metricsAddr != "" {
				cfg.MetricsAddr = metricsAddr
			}
			if err := cfg.Validate(); err != nil {
				return withExit(1, fmt.Errorf("daemon: config: %w", err))
			}
			logger, err := logf.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			cfg = daemon.ResolveCgroupParent(cfg, logger)
			if cfg.Backend == "qemu" {
				// Decide KVM or TCG once; monitors get the result.
				accel, why, err := (&qemu.Backend{Binary: cfg.QEMU.Binary, Accel: cfg.QEMU.Accel, Machine: cfg.QEMU.Machine}).ResolveAccel(ctx)
				if err != nil {
					return withExit(1, err)
				}
				if why != "" {
					logger.Warn("microVMs run under TCG (software emulation)", "why", why)
				}
				cfg.QEMU.Accel = accel
			}
			be, err := newBackend(cfg)
			if err != nil {
				return withExit(1, err)
			}
			m := metrics.New(cfg.Backend)
			opts := daemon.Options{Backend: be, Logger: logger, Version: version(), Events: m, Metrics: m.Handler(),
				Ready: func() { notify(logger, sdnotify.Ready) }}
			if bin, why := daemon.FindMonitorBinary(ctx, buildinfo.String()); bin != "" {
				opts.MonitorBinary = bin
			} else {
				logger.Info("monitors run as this executable (slower to start than "+daemon.MonitorBinaryName+")", "why", why)
			}
			if cfg.Backend == "nitro" {
				// The Nitro driver needs its CPU pool and hugepages set up
				// before anything else (nitro-cli's allocator service).
				if err := applyNitroAllocator(ctx, &cfg, &opts, logger); err != nil {
					return withExit(allocator.ExitCode(err), err)
				}
			}
			d, err := daemon.New(ctx, cfg, opts)
			if err != nil {
				return withExit(1, err)
			}
			defer d.Close()
			m.SetSource(d)
			stopping := notifyStopping(ctx, logger)
			err = d.Serve(ctx)
			stopping()
			if err != nil {
				return withExit(1, err)
			}
			logger.Info("daemon stopped; running enclaves keep running")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&backendName, "backend", "sandbox", "enclave backend: sandbox, qemu or nitro")
	f.StringVar(&configFile, "config", "", "YAML configuration file")
	f.StringVar(&socket, "socket", "", "API socket (default "+daemon.DefaultSocket+")")
	f.StringVar(&stateDir, "state-dir", "", "state directory (default "+daemon.DefaultStateDir+")")
	f.StringVar(&cgroupParent, "cgroup-parent", "", `cgroup of the enclaves' groups: a relative path, or "auto" for beneath the daemon's delegated cgroup (default cloister)`)
	f.StringVar(&metricsAddr, "metrics-addr", "", "also serve /metrics and /healthz on this TCP address, e.g. 127.0.0.1:9464 (default off)")
	logf = addLogFlags(cmd, "text")
	return cmd
}

// newMonitorCmd is the per-enclave monitor process the daemon starts.
func newMonitorCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "__monitor (DIR | --spare ROOT)",
		Short:  "Internal: supervise one enclave (started by the daemon)",
		Hidden: true,
		// The daemon's own flag for spare monitors is an argument here.
		DisableFlagParsing: true,
		Args:               cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Standard error is the enclave's monitor.log.
			logger := newLogger(os.Stderr, slog.LevelInfo, "json")
			if err := daemon.MonitorMain(cmd.Context(), args, newBackend, logger); err != nil {
				return withExit(1, err)
			}
			return nil
		},
	}
}

// applyNitroAllocator reserves the enclave CPU pool (ne_cpus) and
// hugepages from the configuration and makes them the daemon's pool, in
// whole cores. The core grouping is kept in the state directory because
// Linux hides the topology of the CPUs the pool takes offline, and a
// restarted daemon finds the pool already in place.
func applyNitroAllocator(ctx context.Context, cfg *daemon.Config, opts *daemon.Options, logger *slog.Logger) error {
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = daemon.DefaultMemoryMiB
	}
	res, err := allocator.Apply(ctx, allocator.Dir("/"), allocator.Config{MemoryMiB: mem, CPUCount: cfg.CPUCount, CPUPool: cfg.CPUPool})
	if err != nil {
		return err
	}
	stateDir := cfg.StateDir
	if stateDir == "" {
		stateDir = daemon.DefaultStateDir
	}
	coresFile := filepath.Join(stateDir, "nitro-cores.json")
	cores := res.Cores
	if cores != nil {
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return err
		}
		b, _ := json.Marshal(cores)
		if err := os.WriteFile(coresFile, b, 0o600); err != nil {
			return fmt.Errorf("save the CPU pool's core layout: %w", err)
		}
	} else if b, err := os.ReadFile(coresFile); err == nil {
		if err := json.Unmarshal(b, &cores); err != nil {
			return fmt.Errorf("%s: %w (remove it and restart the daemon with no enclave running)", coresFile, err)
		}
	} else {
		logger.Warn("the core layout of the existing CPU pool is unknown; enclaves may be refused with NE_ERR_FULL_CORES_NOT_USED until the pool is set up again by this daemon (terminate all enclaves and restart it)", "file", coresFile)
	}
	logger.Info("nitro CPU pool and hugepages ready", "cpus", res.CPUs, "node", res.Node, "memory_mib", res.MemoryMiB, "unchanged", res.Unchanged)
	opts.CPUs, opts.Cores = res.CPUs, cores
	cfg.MemoryMiB = res.MemoryMiB
	return nil
}

func version() string {
	return buildVersion()
}
