package main

import (
	"github.com/spf13/cobra"

	"github.com/cloister/cloister/parent"
)

func init() { register(newDevRootCmd) }

func newDevRootCmd() *cobra.Command {
	var sock *string
	cmd := &cobra.Command{
		Use:   "dev-root",
		Short: "Print the daemon's development root certificate (PEM)",
		Long: `dev-root prints the development root certificate (PEM) that signs the
attestation documents of this daemon's enclaves on the sandbox and microVM
backends. Give it to whatever verifies them: cloister verify --root,
cloister attest serve --root, cloister kms serve --root. A daemon on the
nitro backend has none (its enclaves are signed by the AWS Nitro root), and
the command fails.`,
		Example: `  cloister dev-root > dev-root.pem
  cloister kms serve --credentials creds.ini --root dev-root.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pem, err := parent.NewClient(*sock).DevRootPEM(cmd.Context())
			if err != nil {
				return withExit(1, err)
			}
			_, err = cmd.OutOrStdout().Write(pem)
			return err
		},
	}
	sock = socketFlag(cmd)
	return cmd
}
