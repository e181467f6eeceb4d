package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cloister/cloister/internal/tools/gendocs/clidoc"
)

// hookSource is the file added to package main of cmd/cloister by the overlay.
const hookSource = `package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/internal/tools/gendocs/clidoc"
)

func init() {
	register(func() *cobra.Command {
		return &cobra.Command{
			Use:    "__gendocs DIR",
			Hidden: true,
			Args:   cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				home, _ := os.UserHomeDir()
				return clidoc.WriteDir(args[0], clidoc.Render(cmd.Root(), clidoc.Options{HomeDir: home}))
			},
		}
	})
	register(func() *cobra.Command {
		return &cobra.Command{
			Use:    "__genman DIR SOURCE DATE",
			Hidden: true,
			Args:   cobra.ExactArgs(3),
			RunE: func(cmd *cobra.Command, args []string) error {
				home, _ := os.UserHomeDir()
				return clidoc.WriteManDir(args[0], clidoc.RenderMan(cmd.Root(), clidoc.ManOptions{
					Options: clidoc.Options{HomeDir: home}, Source: args[1], Date: args[2]}))
			},
		}
	})
}
`

// hookName is the name of the overlay file inside cmd/cloister.
const hookName = "zz_gendocs_overlay.go"

func main() {
	check := flag.Bool("check", false, "compare instead of writing; exit 1 when the reference is out of date")
	out := flag.String("out", "", "output directory (default: docs/cli in the module root)")
	man := flag.String("man", "", "write section-1 manual pages (roff) into this directory instead")
	manSource := flag.String("man-source", "cloister", "manual pages' source footer, e.g. \"cloister 0.3.0\"")
	manDate := flag.String("man-date", "", "manual pages' date, YYYY-MM-DD (required with -man)")
	flag.Parse()
	var err error
	if *man != "" {
		err = runMan(*man, *manSource, *manDate, os.Stderr)
	} else {
		err = run(*check, *out, os.Stderr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		if errors.Is(err, clidoc.ErrOutOfDate) {
			fmt.Fprintln(os.Stderr, "gendocs: regenerate with: go run ./internal/tools/gendocs")
		}
		os.Exit(1)
	}
}

// run builds cmd/cloister with the hook and writes (or, with check, compares)
// the reference in out, which defaults to docs/cli in the module root.
func run(check bool, out string, stderr io.Writer) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if out == "" {
		out = filepath.Join(root, "docs", "cli")
	}
	out, err = filepath.Abs(out)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "gendocs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin, err := buildHooked(root, tmp, stderr)
	if err != nil {
		return err
	}

	dest := out
	if check {
		dest = filepath.Join(tmp, "cli")
	}
	gen := exec.Command(bin, "__gendocs", dest)
	gen.Stdout, gen.Stderr = stderr, stderr
	if err := gen.Run(); err != nil {
		return fmt.Errorf("running the docs hook: %w", err)
	}
	if !check {
		return nil
	}
	pages, err := clidoc.ReadDir(dest)
	if err != nil {
		return err
	}
	return clidoc.Compare(out, pages)
}

// runMan writes the manual pages into dir.
func runMan(dir, source, date string, stderr io.Writer) error {
	if _, err := time.Parse(time.DateOnly, date); err != nil {
		return fmt.Errorf("-man-date %q: want YYYY-MM-DD", date)
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "gendocs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin, err := buildHooked(root, tmp, stderr)
	if err != nil {
		return err
	}
	gen := exec.Command(bin, "__genman", dir, source, date)
	gen.Stdout, gen.Stderr = stderr, stderr
	if err := gen.Run(); err != nil {
		return fmt.Errorf("running the manual page hook: %w", err)
	}
	return nil
}

// buildHooked builds cmd/cloister with the hook file into tmp.
func buildHooked(root, tmp string, stderr io.Writer) (string, error) {
	hook := filepath.Join(tmp, hookName)
	if err := os.WriteFile(hook, []byte(hookSource), 0o644); err != nil {
		return "", err
	}
	overlay, err := json.Marshal(map[string]map[string]string{
		"Replace": {filepath.Join(root, "cmd", "cloister", hookName): hook},
	})
	if err != nil {
		return "", err
	}
	overlayFile := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(overlayFile, overlay, 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(tmp, "cloister")
	build := exec.Command(goTool(), "build", "-overlay", overlayFile, "-o", bin, "./cmd/cloister")
	build.Dir = root
	build.Stdout, build.Stderr = stderr, stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building cmd/cloister with the docs hook: %w", err)
	}
	return bin, nil
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	cmd := exec.Command(goTool(), "env", "GOMOD")
	outb, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(outb))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the cloister module: run gendocs from the repository")
	}
	return filepath.Dir(gomod), nil
}

// goTool is the go command: $GOROOT/bin/go when present, else "go" on PATH.
func goTool() string {
	if r := os.Getenv("GOROOT"); r != "" {
		if p := filepath.Join(r, "bin", "go"); fileExists(p) {
			return p
		}
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
