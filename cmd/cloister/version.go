package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/internal/buildinfo"
)

func init() { register(newVersionCmd) }

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the cloister version and the commit it was built from",
		Long: `version prints the version of this build and the commit it was built from,
as cloister --version does: the release version set by the package build, or
the module version ((devel) for a source build), and the VCS revision.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "cloister version", buildinfo.String())
			return err
		},
	}
}

// setVersion gives the root command nitro-cli's --version flag.
func setVersion(root *cobra.Command) {
	root.Version = buildinfo.String()
	root.SetVersionTemplate("cloister version {{.Version}}\n")
}

// buildVersion is this build's version (daemon info, verifier tokens).
func buildVersion() string { return buildinfo.Version() }
