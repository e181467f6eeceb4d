package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/enclave/eif"
)

func init() { register(newDescribeEIFCmd) }

func newDescribeEIFCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "describe-eif",
		Short: "Show an EIF's version, measurements, signature and metadata (nitro-cli JSON)",
		Long: `describe-eif reads an EIF, checks its layout, CRC and (when signed) its
signature, and prints nitro-cli describe-eif's JSON: EifVersion, Measurements
(PCR0, PCR1, PCR2 and PCR8 when signed), IsSigned, CheckCRC, SignatureCheck,
SigningCertificate, ImageName, ImageVersion and Metadata. A CRC mismatch is
reported as CheckCRC false rather than an error, as nitro-cli does.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			img, err := eif.Open(path, eif.ReadOptions{IgnoreCRC: true})
			if err != nil {
				return withExit(1, fmt.Errorf("describe-eif: %w", err))
			}
			d, err := eif.Describe(img)
			if err != nil {
				return withExit(1, fmt.Errorf("describe-eif: %s: %w", path, err))
			}
			return printJSON(cmd.OutOrStdout(), d, nitroJSON)
		},
	}
	cmd.Flags().StringVar(&path, "eif-path", "", "EIF file to describe (required)")
	_ = cmd.MarkFlagRequired("eif-path")
	return cmd
}
