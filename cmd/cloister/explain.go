package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
)

func init() { register(newExplainCmd) }

// errorCodes explains the nitro-cli error codes the daemon reports: what
// the condition is and what to do about it.
var errorCodes = map[string]string{
	"E01": "A required argument is missing. run-enclave needs --eif-path, --memory and one of --cpu-count or --cpu-ids (or --config with eif_path, memory_mib and cpu_count or cpu_ids).",
	"E02": "Arguments conflict: --cpu-count and --cpu-ids (cpu_count and cpu_ids) cannot be given together. Keep one.",
	"E03": "An argument is invalid: a negative CPU count, an enclave CID outside 4..4294967294 or already used by a running enclave, or a malformed request. Fix the value, or omit --enclave-cid to let the daemon pick one.",
	"E11": "A socket failed: the daemon could not open a listener the enclave needs (heartbeat, security module, egress proxy). See the monitor log in the enclave's directory; another process may hold the port.",
	"E19": "A file operation failed: the EIF cannot be read (missing file or no permission). Check --eif-path.",
	"E20": "Invalid CPU configuration: a CPU is listed twice in --cpu-ids, or (Nitro) only part of a physical core was requested; enclaves get whole cores.",
	"E21": "A requested CPU is not available: it is outside the daemon's CPU pool or used by another enclave. Choose CPUs from the pool (cloister describe-enclaves shows who uses what) or change cpu_pool in the daemon config.",
	"E22": "Not enough free CPUs in the pool for --cpu-count. Terminate an enclave or enlarge the pool (cpu_count / cpu_pool in the daemon config).",
	"E26": "Not enough memory requested: an enclave needs at least 4 times its EIF's size, and no less than 64 MiB. Raise --memory.",
	"E27": "Not enough free memory in the daemon's budget. Terminate an enclave or raise memory_mib in the daemon config.",
	"E35": "The EIF cannot be used: it is not a valid EIF (bad magic, CRC, layout or metadata), or it was built without a kernel and the backend needs one (rebuild with build-enclave --kernel).",
	"E36": "The enclave did not boot: it ended, or sent no heartbeat before the timeout. The error carries the last lines of its console; `cloister console --enclave-id ID --no-follow` shows all of it.",
	"E39": "The enclave's monitor process did not report: it could not start or died during the launch. See monitor.log in the enclave's directory under the daemon's state directory.",
	"E58": "Invalid or duplicate enclave name: names are at most 128 characters without '/', and unique among running enclaves. Choose another --enclave-name.",
	"E59": "The EIF's signature does not verify: its COSE signature does not match its PCR0 or certificate, or the signing certificate has expired. Re-sign the image with sign-eif.",
}

func newExplainCmd() *cobra.Command {
	var code string
	cmd := &cobra.Command{
		Use:   "explain --error-code CODE",
		Short: "Explain an error code (nitro-cli compatible)",
		Long: `explain prints what a nitro-cli error code the daemon reports means and how to
fix it, for the codes Cloister uses. Every error message already carries the
explanation; this is for scripts and habits carried over from nitro-cli.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := strings.ToUpper(strings.TrimSpace(code))
			if !strings.HasPrefix(c, "E") {
				c = "E" + c
			}
			text, ok := errorCodes[c]
			if !ok {
				known := make([]string, 0, len(errorCodes))
				for k := range errorCodes {
					known = append(known, k)
				}
				sort.Strings(known)
				return withExit(1, fmt.Errorf("error code %q is not one Cloister reports (known: %s)", code, strings.Join(known, ", ")))
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", c, text)
			return err
		},
	}
	cmd.Flags().StringVar(&code, "error-code", "", "the error code, e.g. E26")
	_ = cmd.MarkFlagRequired("error-code")
	return cmd
}
