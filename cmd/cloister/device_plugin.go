package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/deviceplugin"
)

func init() { register(newDevicePluginCmd) }

func newDevicePluginCmd() *cobra.Command {
	var (
		sock     *string
		dir      string
		enclaves int
		unit     int
		poll     time.Duration
		logf     *logFlags
	)
	cmd := &cobra.Command{
		Use:   "device-plugin [flags]",
		Short: "Advertise this node's enclave CPUs, memory and slots to the kubelet",
		Long: `device-plugin is a Kubernetes device plugin (kubelet API v1beta1) for the
local daemon's pool. It registers three extended resources with the kubelet:

  aws.ec2.nitro/nitro_enclaves   enclave slots (AWS's name: manifests written
                                 for AWS's device plugin keep working)
  cloister.dev/enclave-cpu       the pool's CPUs, one device each
  cloister.dev/enclave-memory    the pool's memory, in units of --memory-unit MiB

so that the scheduler places enclave pods on nodes with room. A container
allocated cloister.dev/enclave-cpu or cloister.dev/enclave-memory gets the
annotations cloister.dev/cpu-count and cloister.dev/memory-mib, which the
containerd shim sizes its enclave from when the container sets no limits.
It re-registers when the kubelet restarts and re-reads the pool every
--poll. Run it on every node (a DaemonSet; see docs/fleet.md).`,
		Example: `  cloister device-plugin
  cloister device-plugin --enclaves 4 --memory-unit 256`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if unit < 1 {
				return fmt.Errorf("--memory-unit %d: want at least 1 MiB", unit)
			}
			logger, err := logf.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			base := cmd.Context()
			if base == nil {
				base = context.Background()
			}
			ctx, stop := signalContext(base)
			defer stop()
			s := *sock
			if s == "" {
				s = parent.SocketFromEnv()
			}
			return deviceplugin.Run(ctx, deviceplugin.Config{
				Daemon:        parent.NewClient(s),
				Dir:           dir,
				Enclaves:      enclaves,
				MemoryUnitMiB: unit,
				Poll:          poll,
				Logger:        logger,
			})
		},
	}
	sock = socketFlag(cmd)
	cmd.Flags().StringVar(&dir, "dir", "/var/lib/kubelet/device-plugins/", "the kubelet's device-plugin directory (holds kubelet.sock)")
	cmd.Flags().IntVar(&enclaves, "enclaves", 0, "aws.ec2.nitro/nitro_enclaves devices (default: one per CPU of the pool)")
	cmd.Flags().IntVar(&unit, "memory-unit", deviceplugin.DefaultMemoryUnitMiB, "MiB of one cloister.dev/enclave-memory device")
	cmd.Flags().DurationVar(&poll, "poll", deviceplugin.DefaultPoll, "how often the daemon's pool is re-read")
	logf = addLogFlags(cmd, "text")
	return cmd
}
