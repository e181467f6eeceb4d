package main

import (
	"encoding/hex"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/enclave/eif"
)

func init() { register(newPCRCmd) }

func newPCRCmd() *cobra.Command {
	var input, cert string
	cmd := &cobra.Command{
		Use:   "pcr",
		Short: "Compute a PCR value: of a file (--input) or PCR8 of a signing certificate",
		Long: `pcr prints {"PCR":hex} = SHA384(0^48 ‖ SHA384(file)) for --input, or
{"PCR8":hex} = SHA384(0^48 ‖ SHA384(DER certificate)) for --signing-certificate,
as nitro-cli pcr does.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if input != "" {
				f, err := os.Open(input)
				if err != nil {
					return withExit(1, fmt.Errorf("pcr: %w", err))
				}
				defer f.Close()
				p, err := eif.PCRFromReader(f)
				if err != nil {
					return withExit(1, err)
				}
				return printJSON(cmd.OutOrStdout(), map[string]string{"PCR": hex.EncodeToString(p[:])}, nitroJSON)
			}
			b, err := readLimited(cert, 1<<20)
			if err != nil {
				return withExit(1, fmt.Errorf("pcr: %w", err))
			}
			p, err := eif.PCR8FromCertificate(b)
			if err != nil {
				return withExit(1, fmt.Errorf("pcr: %s: %w", cert, err))
			}
			return printJSON(cmd.OutOrStdout(), map[string]string{"PCR8": hex.EncodeToString(p[:])}, nitroJSON)
		},
	}
	cmd.Flags().StringVar(&input, "input", "", "file to measure")
	cmd.Flags().StringVar(&cert, "signing-certificate", "", "PEM or DER signing certificate")
	cmd.MarkFlagsOneRequired("input", "signing-certificate")
	cmd.MarkFlagsMutuallyExclusive("input", "signing-certificate")
	return cmd
}
