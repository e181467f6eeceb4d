package e2e

import (
	"os"
	"sync"
	"testing"

	"github.com/cloister/cloister/parent/parenttest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parenttest.Cleanup()
	if app.dir != "" {
		os.RemoveAll(app.dir)
	}
	os.Exit(code)
}

// app is the enclaveapp test program, built once.
var app struct {
	once sync.Once
	dir  string
	path string
}

// appImage builds an EIF that runs enclaveapp with args; extra are further
// build-enclave flags.
func appImage(t testing.TB, dir, name string, extra []string, args ...string) string {
	t.Helper()
	app.once.Do(func() {
		app.dir, _ = os.MkdirTemp("", "cloister-e2e-app")
		app.path = parenttest.BuildProgram(t, app.dir, "enclaveapp", "./e2e/testdata/enclaveapp")
	})
	if app.path == "" {
		t.Fatal("enclaveapp was not built")
	}
	return parenttest.BuildImage(t, dir, parenttest.Image{
		Name:  name,
		Files: map[string]string{"bin/enclaveapp": app.path},
		Cmd:   append([]string{"/bin/enclaveapp"}, args...),
		Extra: extra,
	})
}
