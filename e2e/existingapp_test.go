package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloister/cloister/parent/parenttest"
)

// existingWorld is one world the unmodified programs run in.
type existingWorld struct {
	name    string
	backend string
	config  string
	flags   func(t testing.TB) []string // build-enclave flags for its images
	memMiB  int
	boot    time.Duration // how long the program may take to be ready
	console string        // a line the world's console must show
}

// existingWorlds are the worlds of TestExistingApp and TestNSMProbe.
var existingWorlds = []existingWorld{
	{name: "sandbox", backend: "sandbox", config: sandboxConfig, flags: func(testing.TB) []string { return nil }, memMiB: 256, boot: time.Minute},
	{name: "microvm", backend: "qemu", config: qemuConfig, flags: vmFlags, memMiB: 512, boot: 3 * time.Minute,
		console: "cloister-init: /dev/nsm served through CUSE"},
}

// existingProgram is one unmodified Nitro program.
type existingProgram struct {
	lang  string
	image func(t *testing.T, dir string, flags []string) string
}

var existingPrograms = []existingProgram{
	{lang: "go", image: goExistingImage},
	{lang: "python", image: pythonExistingImage},
}

// goExistingImage builds e2e/testdata/existingapp (hf/nsm and mdlayher/vsock
// only) into an image.
func goExistingImage(t *testing.T, dir string, flags []string) string {
	bin := parenttest.BuildProgram(t, dir, "existingapp", "./e2e/testdata/existingapp")
	return parenttest.BuildImage(t, dir, parenttest.Image{
		Name:  "existing-go",
		Files: map[string]string{"bin/existingapp": bin},
		Cmd:   []string{"/bin/existingapp"},
		Extra: flags,
	})
}

// pythonExistingImage builds an image holding Debian's python3 (the host's
// interpreter, its libraries and the part of its standard library the
// script imports) and e2e/testdata/existingapp/existingapp.py, run as
// "/usr/bin/python3 /app/existingapp.py".
func pythonExistingImage(t *testing.T, dir string, flags []string) string {
	script := filepath.Join(parenttest.RepoRoot(), "e2e", "testdata", "existingapp", "existingapp.py")
	rootfs := parenttest.PythonRootFS(t, script)
	return parenttest.BuildImage(t, dir, parenttest.Image{
		Name:   "existing-python",
		RootFS: rootfs,
		Files:  map[string]string{"app/existingapp.py": script},
		Cmd:    []string{"/usr/bin/python3", "/app/existingapp.py"},
		Extra:  flags,
	})
}

// existingReport is what the programs answer (see existingapp/main.go).
type existingReport struct {
	Lang        string `json:"lang"`
	PCR0        string `json:"pcr0"`
	PCR1        string `json:"pcr1"`
	PCR2        string `json:"pcr2"`
	Document    string `json:"document"`
	Random      string `json:"random"`
	ParentReply string `json:"parent_reply"`
	Error       string `json:"error"`
}

// TestExistingApp runs Nitro programs that do not know Cloister — one in Go
// with github.com/hf/nsm and github.com/mdlayher/vsock, one in Python with
// fcntl.ioctl on /dev/nsm and socket.AF_VSOCK — unchanged in each world:
// each reads PCR0/1/2, gets an attestation document with the test's fresh
// nonce and user data, which must verify under the daemon's development
// root and carry the image's PCRs, gets random bytes, dials the parent on
// CID 3, and accepts a connection from `cloister connect`.
func TestExistingApp(t *testing.T) {
	for _, w := range existingWorlds {
		for _, p := range existingPrograms {
			t.Run(w.name+"/"+p.lang, func(t *testing.T) {
				runExistingApp(t, w, p)
			})
		}
	}
}

func runExistingApp(t *testing.T, w existingWorld, p existingProgram) {
	flags := w.flags(t)
	d := parenttest.StartDaemon(t, w.backend, w.config)
	dir := parenttest.ShortTemp(t)
	img := p.image(t, dir, flags)
	res := d.Run(img, w.memMiB, false)
	d.ConsoleUntil(res.EnclaveID, "EXISTINGAPP READY "+p.lang, w.boot)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The parent's side of the program's connection to (3, port).
	const parentPort = 7000
	ln, err := d.Client.Listen(ctx, res.EnclaveID, parentPort)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var parentGot string
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("parent listener: %v", err)
			return
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Errorf("parent listener: %v", err)
			return
		}
		parentGot = strings.TrimSpace(line)
		fmt.Fprintf(c, "hello back, %s\n", p.lang)
	})

	nonce, userData := make([]byte, 32), make([]byte, 64)
	rand.Read(nonce)
	rand.Read(userData)
	cmd := exec.Command(parenttest.Cloister(t), "connect", "--socket", d.Socket, "--enclave-id", res.EnclaveID, "--port", "5005")
	cmd.Stdin = strings.NewReader(fmt.Sprintf("%x %x %d\n", nonce, userData, parentPort))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cloister connect: %v\n%s", err, stderr.String())
	}
	wg.Wait()
	var r existingReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("report %q: %v", out, err)
	}
	if r.Error != "" || r.Lang != p.lang {
		t.Fatalf("the program reports %+v\nconsole:\n%s", r, d.ConsoleUntil(res.EnclaveID, "", 0))
	}

	doc, err := base64.StdEncoding.DecodeString(r.Document)
	if err != nil {
		t.Fatal(err)
	}
	v := verifyDevRoot(ctx, t, d, doc, "the program's document")
	got := v.Document()
	if !bytes.Equal(got.Nonce, nonce) || !bytes.Equal(got.UserData, userData) {
		t.Errorf("document nonce %x user data %x, want %x and %x", got.Nonce, got.UserData, nonce, userData)
	}
	desc := describeEIF(t, img)
	for i, want := range []string{desc.PCR0, desc.PCR1, desc.PCR2} {
		fromDevice := []string{r.PCR0, r.PCR1, r.PCR2}[i]
		if fromDevice != want || hex.EncodeToString(got.PCRs[i]) != want {
			t.Errorf("PCR%d: DescribePCR %s, document %x, describe-eif %s", i, fromDevice, got.PCRs[i], want)
		}
	}
	if b, err := hex.DecodeString(r.Random); err != nil || len(b) == 0 || bytes.Equal(b, make([]byte, len(b))) {
		t.Errorf("random bytes %q", r.Random)
	}
	if want := "hello from existingapp " + p.lang; parentGot != want {
		t.Errorf("the parent got %q, want %q", parentGot, want)
	}
	if want := "hello back, " + p.lang; r.ParentReply != want {
		t.Errorf("the program got %q from the parent, want %q", r.ParentReply, want)
	}
	console := d.ConsoleUntil(res.EnclaveID, "EXISTINGAPP DONE", time.Minute)
	if !strings.Contains(console, w.console) {
		t.Errorf("console lacks %q:\n%s", w.console, console)
	}
}
