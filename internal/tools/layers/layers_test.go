package layers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/testenv"
)

// pkg is what "go list -json" says about one package.
type pkg struct {
	ImportPath   string
	Imports      []string // non-test files
	TestImports  []string // _test.go files of the package itself
	XTestImports []string // the external _test package
	Error        *struct{ Err string }
}

// kind says which files of the importer an edge comes from.
type kind int

const (
	prod  kind = iota // non-test files
	test              // _test.go files in the package
	xtest             // the external _test package
)

func (k kind) String() string {
	return [...]string{"imports", "test imports", "external test imports"}[k]
}

// edge is one import, paths relative to the module ("attest",
// "internal/nsm"); to is the full path when it is outside the module.
type edge struct {
	from, to string
	kind     kind
	local    bool // to is a package of this module
}

// rule is one sentence of docs/ARCHITECTURE.md and the edges it forbids.
type rule struct {
	name   string
	breaks func(e edge) bool
}

// under reports whether rel is dir or inside it.
func under(rel, dir string) bool { return rel == dir || strings.HasPrefix(rel, dir+"/") }

// testSupport reports whether rel is a test-support package: a …test
// package (parenttest, nedevtest, egresstest, exampletest; attest is the
// product's attestation package, not one) or internal/testenv.
func testSupport(rel string) bool {
	base := path.Base(rel)
	return rel == "internal/testenv" || (strings.HasSuffix(base, "test") && base != "test" && rel != "attest")
}

var rules = []rule{
	{
		name: "internal/ imports only internal/ (tests included; internal/nsm's external test may import parent/nsmemu and attest)",
		breaks: func(e edge) bool {
			if !under(e.from, "internal") || !e.local || under(e.to, "internal") {
				return false
			}
			nsmException := e.from == "internal/nsm" && e.kind == xtest && (e.to == "parent/nsmemu" || e.to == "attest")
			return !nsmException
		},
	},
	{
		name: "attest and enclave/eif import nothing of Cloister's but internal/cborx (tests included)",
		breaks: func(e edge) bool {
			return (e.from == "attest" || e.from == "enclave/eif") && e.local && e.to != e.from && e.to != "internal/cborx"
		},
	},
	{
		name: "only cmd/, e2e/ and examples/ import cmd/…",
		breaks: func(e edge) bool {
			return e.local && under(e.to, "cmd") && !under(e.from, "cmd") && !under(e.from, "e2e") && !under(e.from, "examples")
		},
	},
	{
		name: "production code imports no test-support package (…test, internal/testenv) and not package testing",
		breaks: func(e edge) bool {
			if e.kind != prod || testSupport(e.from) {
				return false
			}
			return (e.local && testSupport(e.to)) || (!e.local && e.to == "testing")
		},
	},
}

// edges returns every import of pkgs, module paths made relative to mod.
func edges(mod string, pkgs []pkg) []edge {
	rel := func(p string) (string, bool) {
		if r, ok := strings.CutPrefix(p, mod+"/"); ok {
			return r, true
		}
		return p, p == mod
	}
	var out []edge
	for _, p := range pkgs {
		from, _ := rel(p.ImportPath)
		for k, imps := range [][]string{p.Imports, p.TestImports, p.XTestImports} {
			for _, imp := range imps {
				to, local := rel(imp)
				out = append(out, edge{from: from, to: to, kind: kind(k), local: local})
			}
		}
	}
	return out
}

// violations lists, for every rule, the edges that break it.
func violations(mod string, pkgs []pkg) []string {
	var out []string
	for _, e := range edges(mod, pkgs) {
		for _, r := range rules {
			if r.breaks(e) {
				out = append(out, fmt.Sprintf("%s %s %s: breaks %q", e.from, e.kind, e.to, r.name))
			}
		}
	}
	return out
}

// goList runs "go list -json" over the whole module for goos and returns
// the module path and its packages.
func goList(t *testing.T, goBin, goos string) (string, []pkg) {
	t.Helper()
	dir := ""
	run := func(args ...string) []byte {
		cmd := exec.Command(goBin, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOOS="+goos, "CGO_ENABLED=0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
		}
		return out
	}
	gomod := strings.TrimSpace(string(run("env", "GOMOD")))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("layers: not inside the Cloister module (go env GOMOD is empty)")
	}
	dir = filepath.Dir(gomod)
	mod := strings.TrimSpace(string(run("list", "-m", "-f", "{{.Path}}")))
	out := run("list", "-e", "-json=ImportPath,Imports,TestImports,XTestImports,Error", "./...")
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		if p.Error != nil {
			t.Fatalf("go list %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs = append(pkgs, p)
	}
	return mod, pkgs
}

// TestImportRules checks the module's real import graph.
func TestImportRules(t *testing.T) {
	goBin := testenv.LookPath(t, "go", "install Go and put its bin directory on PATH")
	for _, goos := range []string{"linux", "darwin"} {
		t.Run(goos, func(t *testing.T) {
			mod, pkgs := goList(t, goBin, goos)
			// The rules name these packages; if one moved, the rules must
			// move with it rather than pass vacuously.
			seen := map[string]bool{}
			for _, p := range pkgs {
				seen[strings.TrimPrefix(p.ImportPath, mod+"/")] = true
			}
			for _, want := range []string{"attest", "enclave/eif", "internal/cborx", "internal/nsm", "parent/nsmemu", "internal/testenv"} {
				if !seen[want] {
					t.Errorf("go list found no package %s/%s; update the rules in this test", mod, want)
				}
			}
			for _, v := range violations(mod, pkgs) {
				t.Errorf("%s (docs/ARCHITECTURE.md, Direction of dependencies)", v)
			}
		})
	}
}

// TestRulesCatch shows that each rule rejects the edges it is meant to and
// lets the allowed ones through.
func TestRulesCatch(t *testing.T) {
	const mod = "example.com/m"
	imp := func(from string, imports, test, xtest []string) pkg {
		q := func(ps []string) []string {
			var out []string
			for _, p := range ps {
				if p == "testing" || strings.Contains(p, ".") {
					out = append(out, p)
				} else {
					out = append(out, mod+"/"+p)
				}
			}
			return out
		}
		return pkg{ImportPath: mod + "/" + from, Imports: q(imports), TestImports: q(test), XTestImports: q(xtest)}
	}
	tests := []struct {
		name string
		pkg  pkg
		want []string
	}{
		{"internal imports internal", imp("internal/a", []string{"internal/b"}, []string{"internal/testenv"}, []string{"internal/a"}), nil},
		{"internal imports parent", imp("internal/a", []string{"parent/x"}, nil, nil),
			[]string{`internal/a imports parent/x: breaks "internal/ imports only internal/ (tests included; internal/nsm's external test may import parent/nsmemu and attest)"`}},
		{"internal test imports attest", imp("internal/a", nil, []string{"attest"}, nil),
			[]string{`internal/a test imports attest: breaks "internal/ imports only internal/ (tests included; internal/nsm's external test may import parent/nsmemu and attest)"`}},
		{"internal/nsm external test imports the emulator", imp("internal/nsm", nil, nil, []string{"parent/nsmemu", "attest", "internal/nsm"}), nil},
		{"internal/nsm production imports attest", imp("internal/nsm", []string{"attest"}, nil, nil),
			[]string{`internal/nsm imports attest: breaks "internal/ imports only internal/ (tests included; internal/nsm's external test may import parent/nsmemu and attest)"`}},
		{"attest imports cborx and third parties", imp("attest", []string{"internal/cborx", "github.com/veraison/go-cose"}, nil, []string{"attest"}), nil},
		{"eif test imports testenv", imp("enclave/eif", nil, []string{"internal/testenv"}, nil),
			[]string{`enclave/eif test imports internal/testenv: breaks "attest and enclave/eif import nothing of Cloister's but internal/cborx (tests included)"`}},
		{"kms imports cmd", imp("kms", []string{"cmd/cloister"}, nil, nil),
			[]string{`kms imports cmd/cloister: breaks "only cmd/, e2e/ and examples/ import cmd/…"`}},
		{"e2e and examples import cmd", imp("e2e", nil, []string{"cmd/x"}, nil), nil},
		{"production imports a fake", imp("parent/nitro", []string{"parent/nitro/nedev/nedevtest"}, []string{"parent/nitro/hugepage/hugepagetest"}, nil),
			[]string{`parent/nitro imports parent/nitro/nedev/nedevtest: breaks "production code imports no test-support package (…test, internal/testenv) and not package testing"`}},
		{"production imports testing", imp("parent/daemon", []string{"testing"}, nil, nil),
			[]string{`parent/daemon imports testing: breaks "production code imports no test-support package (…test, internal/testenv) and not package testing"`}},
		{"production imports attest", imp("kms", []string{"attest"}, nil, nil), nil},
		{"test support imports test support", imp("examples/internal/exampletest", []string{"parent/parenttest", "internal/testenv", "testing"}, nil, nil), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, violations(mod, []pkg{tt.pkg})); diff != "" {
				t.Errorf("violations (-want +got):\n%s", diff)
			}
		})
	}
}
