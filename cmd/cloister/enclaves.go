package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/internal/egress"
	"github.com/cloister/cloister/parent"
)

func init() {
	register(newRunEnclaveCmd)
	register(newDescribeEnclavesCmd)
	register(newTerminateEnclaveCmd)
	register(newConsoleCmd)
	register(newConnectCmd)
}

// socketFlag adds --socket to a client subcommand.
func socketFlag(cmd *cobra.Command) *string {
	return cmd.Flags().String("socket", "", "daemon API socket (default $CLOISTER_SOCKET or "+parent.DefaultSocket+")")
}

// parseMemory parses nitro-cli's --memory: a number of MiB with an optional
// M, G or T suffix.
func parseMemory(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "M"):
		s = strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		s, mult = strings.TrimSuffix(s, "G"), 1024
	case strings.HasSuffix(s, "T"):
		s, mult = strings.TrimSuffix(s, "T"), 1024*1024
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("invalid --memory %q: want a positive number of MiB, optionally with an M, G or T suffix", s)
	}
	return n * mult, nil
}

// signalContext is cancelled on SIGINT/SIGTERM.
func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

func newRunEnclaveCmd() *cobra.Command {
	var sock *string
	var (
		eifPath, memory, name, configFile string
		cpuCount                          int
		cpuIDs                            []int
		cid                               uint64
		debug, attach                     bool
		egressAllow                       []string
		egressAllowlist                   string
	)
	cmd := &cobra.Command{
		Use:   "run-enclave",
		Short: "Launch an enclave from an EIF (nitro-cli compatible)",
		Long: `run-enclave asks the daemon to launch an enclave from an EIF with dedicated
CPUs and memory from the daemon's pool, and prints nitro-cli's JSON:
{EnclaveName, EnclaveID, ProcessID, EnclaveCID, NumberOfCPUs, CPUIDs, MemoryMiB}.

--egress-allow HOST:PORT (repeatable, or comma-separated) and
--egress-allowlist FILE (vsock-proxy's allowlist format) give the enclave its
own egress allowlist: its egress proxies reach a destination only when both
the daemon's allowlist and this one permit it. It can only narrow the
daemon's: an entry the daemon's allowlist does not cover is refused. An
address is a host name, an IP address or a CIDR prefix; IPv6 goes in
brackets ([fd00::/8]:443). --egress-allow '' allows no destination at all.

--config takes nitro-cli's JSON file (eif_path, memory_mib, cpu_count or
cpu_ids, enclave_cid, debug_mode, attach_console, enclave_name, and
Cloister's egress: {"allowlist": [{"address": …, "port": …}]}) and conflicts
with every other flag except --attach-console.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var req parent.RunRequest
			if configFile != "" {
				for _, f := range []string{"eif-path", "memory", "cpu-count", "cpu-ids", "enclave-cid", "enclave-name", "debug-mode", "egress-allow", "egress-allowlist"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--config cannot be combined with --%s", f)
					}
				}
				b, err := os.ReadFile(configFile)
				if err != nil {
					return err
				}
				dec := json.NewDecoder(strings.NewReader(string(b)))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&req); err != nil {
					return fmt.Errorf("--config %s: %w", configFile, err)
				}
			} else {
				if eifPath == "" || memory == "" {
					return errors.New("--eif-path and --memory are required (or give --config)")
				}
				mem, err := parseMemory(memory)
				if err != nil {
					return err
				}
				req = parent.RunRequest{EIFPath: eifPath, MemoryMiB: mem, CPUCount: cpuCount, CPUIDs: cpuIDs,
					EnclaveCID: cid, DebugMode: debug, EnclaveName: name}
				if cmd.Flags().Changed("egress-allow") || egressAllowlist != "" {
					if req.Egress, err = egressPolicy(egressAllow, egressAllowlist); err != nil {
						return err
					}
				}
			}
			if attach {
				req.DebugMode, req.AttachConsole = true, true
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			c := parent.NewClient(*sock)
			res, err := c.Run(ctx, req)
			if err != nil {
				return withExit(1, err)
			}
			if err := printJSON(cmd.OutOrStdout(), res, cloisterJSON); err != nil {
				return err
			}
			if req.AttachConsole {
				return c.Console(ctx, res.EnclaveID, true, 0, cmd.OutOrStdout())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&eifPath, "eif-path", "", "path of the enclave image")
	f.StringVar(&memory, "memory", "", "memory in MiB, or with an M, G or T suffix")
	f.IntVar(&cpuCount, "cpu-count", 0, "number of CPUs to take from the pool")
	f.IntSliceVar(&cpuIDs, "cpu-ids", nil, "exact CPU ids from the pool (conflicts with --cpu-count)")
	f.Uint64Var(&cid, "enclave-cid", 0, "enclave CID (4..4294967294; default: picked by the daemon)")
	f.StringVar(&name, "enclave-name", "", "enclave name (default: the EIF's base name)")
	f.BoolVar(&debug, "debug-mode", false, "debug mode: console available, PCRs reported as zeros in attestations")
	f.BoolVar(&attach, "attach-console", false, "follow the console after launch (implies --debug-mode)")
	f.StringVar(&configFile, "config", "", "nitro-cli JSON config file with the launch parameters")
	f.StringArrayVar(&egressAllow, "egress-allow", nil, "the enclave's own egress allowlist: HOST:PORT, repeatable or comma-separated; within the daemon's")
	f.StringVar(&egressAllowlist, "egress-allowlist", "", "the enclave's own egress allowlist from a file in vsock-proxy's format; within the daemon's")
	cmd.MarkFlagsMutuallyExclusive("cpu-count", "cpu-ids")
	sock = socketFlag(cmd)
	return cmd
}

// egressPolicy is the enclave's own egress allowlist from --egress-allow
// values (comma-separated HOST:PORT lists) and an --egress-allowlist file
// (vsock-proxy's format): the entries of both.
func egressPolicy(allow []string, file string) (*parent.EgressPolicy, error) {
	p := &parent.EgressPolicy{Allowlist: []parent.EgressEntry{}}
	for _, v := range allow {
		q, err := parent.ParseEgressPolicy(v)
		if err != nil {
			return nil, fmt.Errorf("--egress-allow %q: %w", v, err)
		}
		p.Allowlist = append(p.Allowlist, q.Allowlist...)
	}
	if file != "" {
		al, err := egress.LoadAllowlist(file)
		if err != nil {
			return nil, fmt.Errorf("--egress-allowlist: %w", err)
		}
		for _, e := range al.Entries {
			p.Allowlist = append(p.Allowlist, parent.EgressEntry{Address: e.Address, Port: e.Port})
		}
	}
	if len(p.Allowlist) > parent.MaxEgressEntries {
		return nil, fmt.Errorf("the enclave's egress allowlist has %d entries; at most %d", len(p.Allowlist), parent.MaxEgressEntries)
	}
	return p, nil
}

func newDescribeEnclavesCmd() *cobra.Command {
	var sock *string
	var all, metadata bool
	cmd := &cobra.Command{
		Use:   "describe-enclaves",
		Short: "List enclaves as a JSON array (nitro-cli compatible)",
		Long: `describe-enclaves prints the running enclaves as nitro-cli does (EnclaveName,
EnclaveID, ProcessID, EnclaveCID, NumberOfCPUs, CPUIDs, MemoryMiB, State, Flags,
Measurements), plus Cloister's Backend, EIFPath, StartTime, VsockSocket,
HostListenerBase and ConsoleLog.
With --all, exited enclaves are listed too (State EXITED) with their ExitStatus.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := parent.NewClient(*sock).Describe(cmd.Context(), all)
			if err != nil {
				return withExit(1, err)
			}
			if !metadata {
				for i := range list {
					list[i].ImageName, list[i].ImageVersion, list[i].Metadata = "", "", nil
				}
			}
			return printJSON(cmd.OutOrStdout(), list, cloisterJSON)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include exited enclaves with their exit status")
	cmd.Flags().BoolVar(&metadata, "metadata", false, "include ImageName, ImageVersion and Metadata")
	sock = socketFlag(cmd)
	return cmd
}

func newTerminateEnclaveCmd() *cobra.Command {
	var sock *string
	var id, name string
	var all bool
	cmd := &cobra.Command{
		Use:   "terminate-enclave",
		Short: "Terminate enclaves (nitro-cli compatible)",
		Long: `terminate-enclave stops an enclave (by --enclave-id or --enclave-name) or every
running enclave (--all) and prints nitro-cli's JSON {EnclaveName, EnclaveID,
Terminated} (an array with --all). The application gets SIGTERM and a few
seconds to exit before the enclave is killed; its CPUs and memory return to
the pool. Terminating an enclave that already exited forgets it and its kept
console log.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := parent.NewClient(*sock)
			if all {
				res, err := c.TerminateAll(cmd.Context())
				if err != nil {
					return withExit(1, err)
				}
				return printJSON(cmd.OutOrStdout(), res, cloisterJSON)
			}
			target := id
			if target == "" {
				target = name
			}
			res, err := c.Terminate(cmd.Context(), target)
			if err != nil {
				return withExit(1, err)
			}
			return printJSON(cmd.OutOrStdout(), res, cloisterJSON)
		},
	}
	cmd.Flags().StringVar(&id, "enclave-id", "", "enclave id")
	cmd.Flags().StringVar(&name, "enclave-name", "", "enclave name")
	cmd.Flags().BoolVar(&all, "all", false, "terminate every running enclave")
	cmd.MarkFlagsMutuallyExclusive("enclave-id", "enclave-name", "all")
	cmd.MarkFlagsOneRequired("enclave-id", "enclave-name", "all")
	sock = socketFlag(cmd)
	return cmd
}

func newConsoleCmd() *cobra.Command {
	var sock *string
	var id, name string
	var timeout int
	var noFollow bool
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Show an enclave's console: the kept log, then live output",
		Long: `console replays everything the enclave has written to its console since it
started (the daemon keeps the log, even after the enclave exits), then follows
new output until the enclave ends, --disconnect-timeout seconds pass, or you
press Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			target := id
			if target == "" {
				target = name
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			if err := parent.NewClient(*sock).Console(ctx, target, !noFollow, timeout, cmd.OutOrStdout()); err != nil {
				return withExit(1, err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&id, "enclave-id", "", "enclave id")
	cmd.Flags().StringVar(&name, "enclave-name", "", "enclave name")
	cmd.Flags().IntVar(&timeout, "disconnect-timeout", 0, "stop following after this many seconds")
	cmd.Flags().BoolVar(&noFollow, "no-follow", false, "print the kept log and exit")
	cmd.MarkFlagsMutuallyExclusive("enclave-id", "enclave-name")
	cmd.MarkFlagsOneRequired("enclave-id", "enclave-name")
	sock = socketFlag(cmd)
	return cmd
}

func newConnectCmd() *cobra.Command {
	var sock *string
	var cid uint64
	var id, name string
	var port uint32
	cmd := &cobra.Command{
		Use:   "connect",
		Short: "Pipe stdin/stdout to a vsock port of an enclave",
		Long: `connect opens a stream to a port inside an enclave, copies stdin to it and
its output to stdout. When stdin ends, the write side is closed and connect
waits for the enclave to finish answering.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			c := parent.NewClient(*sock)
			target := id
			if name != "" {
				target = name
			}
			if cid != 0 {
				d, err := c.ByCID(ctx, cid)
				if err != nil {
					return withExit(1, err)
				}
				target = d.EnclaveID
			}
			conn, err := c.Connect(ctx, target, port)
			if err != nil {
				return withExit(1, err)
			}
			defer conn.Close()
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(cmd.OutOrStdout(), conn)
				done <- err
			}()
			if _, err := io.Copy(conn, cmd.InOrStdin()); err != nil {
				return withExit(1, err)
			}
			if cw, ok := conn.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			select {
			case err := <-done:
				if err != nil {
					return withExit(1, err)
				}
			case <-ctx.Done():
			}
			return nil
		},
	}
	cmd.Flags().Uint64Var(&cid, "enclave-cid", 0, "enclave CID")
	cmd.Flags().StringVar(&id, "enclave-id", "", "enclave id")
	cmd.Flags().StringVar(&name, "enclave-name", "", "enclave name")
	cmd.Flags().Uint32Var(&port, "port", 0, "vsock port inside the enclave")
	_ = cmd.MarkFlagRequired("port")
	cmd.MarkFlagsMutuallyExclusive("enclave-cid", "enclave-id", "enclave-name")
	cmd.MarkFlagsOneRequired("enclave-cid", "enclave-id", "enclave-name")
	sock = socketFlag(cmd)
	return cmd
}
