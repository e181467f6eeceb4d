package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/enclave/eif"
)

func init() { register(newSignEIFCmd) }

func newSignEIFCmd() *cobra.Command {
	var path, certFile, keyFile string
	cmd := &cobra.Command{
		Use:   "sign-eif",
		Short: "Sign an EIF in place (adds or replaces the signature section, fixes the CRC)",
		Long: `sign-eif signs an EIF as nitro-cli does: the signature section holds the PEM
certificate and a COSE_Sign1 over {register_index: 0, register_value: PCR0},
with ES256, ES384 or ES512 chosen by the private key's curve. The file is
rewritten in place with a new CRC, and the new Measurements (now with PCR8,
the SHA-384 measurement of the certificate) are printed. Key policies can pin
PCR8 to accept every image signed with that certificate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			certPEM, key, err := loadSigner(certFile, keyFile)
			if err != nil {
				return withExit(1, err)
			}
			img, err := eif.Open(path, eif.ReadOptions{})
			if err != nil {
				return withExit(1, fmt.Errorf("sign-eif: %w", err))
			}
			if err := eif.Sign(img, certPEM, key); err != nil {
				return withExit(1, fmt.Errorf("sign-eif: %w", err))
			}
			m, err := eif.Measure(img)
			if err != nil {
				return withExit(1, fmt.Errorf("sign-eif: %w", err))
			}
			if err := replaceEIF(path, img); err != nil {
				return withExit(1, fmt.Errorf("sign-eif: %w", err))
			}
			return printJSON(cmd.OutOrStdout(), eif.BuildInfo{Measurements: m}, nitroJSON)
		},
	}
	f := cmd.Flags()
	f.StringVar(&path, "eif-path", "", "EIF file to sign in place (required)")
	f.StringVar(&certFile, "signing-certificate", "", "PEM signing certificate (required)")
	f.StringVar(&keyFile, "private-key", "", "PEM EC private key (required)")
	for _, n := range []string{"eif-path", "signing-certificate", "private-key"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

// replaceEIF writes img next to path and renames it over path, keeping
// path's permissions.
func replaceEIF(path string, img *eif.Image) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := eif.Write(tmp, img); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(fi.Mode().Perm()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
