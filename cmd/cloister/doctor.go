package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/parent/doctor"
)

func init() { register(newDoctorCmd) }

func newDoctorCmd() *cobra.Command {
	var backendName string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host's prerequisites for each backend",
		Long: `doctor checks what each backend needs on this host — the process sandbox
(user namespaces, seccomp, cgroups), the QEMU microVM (QEMU with microvm and
vhost-user-vsock, KVM, a kernel; and whether a QEMU with the optional
nitro-enclave machine is available) and real Nitro Enclaves (/dev/nitro_enclaves,
the CPU pool, hugepages, vsock) — and prints the exact command that fixes
each missing piece.

Exit status: 0 when the chosen backend (--backend), or without --backend at
least one backend, can run; 1 otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := doctor.Run(cmd.Context(), doctor.Host{})
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), r, cloisterJSON); err != nil {
					return err
				}
			} else {
				printReport(cmd, r, backendName)
			}
			if backendName != "" {
				if !r.Ready(backendName) {
					return withExit(1, fmt.Errorf("backend %s is not ready on this host (fixes above)", backendName))
				}
				return nil
			}
			for _, b := range []string{"sandbox", "qemu", "nitro"} {
				if r.Ready(b) {
					return nil
				}
			}
			return withExit(1, fmt.Errorf("no backend is ready on this host (fixes above)"))
		},
	}
	cmd.Flags().StringVar(&backendName, "backend", "", "check only this backend: sandbox, qemu or nitro")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func printReport(cmd *cobra.Command, r doctor.Report, only string) {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	for _, b := range []string{"sandbox", "qemu", "nitro"} {
		if only != "" && b != only {
			continue
		}
		state := "ready"
		if !r.Ready(b) {
			state = "NOT READY"
		}
		fmt.Fprintf(w, "%s backend: %s\n", b, state)
		for _, c := range r.Checks {
			if c.Backend != b && c.Backend != "all" {
				continue
			}
			mark := map[doctor.Status]string{doctor.OK: "ok", doctor.Warning: "warn", doctor.Missing: "MISSING"}[c.Status]
			fmt.Fprintf(w, "  %s\t%s\t%s\n", mark, c.Name, c.Detail)
			if c.Fix != "" && c.Status != doctor.OK {
				fmt.Fprintf(w, "  \t\tfix: %s\n", strings.ReplaceAll(c.Fix, "\n", " "))
			}
		}
		fmt.Fprintln(w)
	}
	w.Flush()
}
