package verifier

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/testenv"
)

// TestPageInChromium drives the page at / in headless Chromium over the
// DevTools protocol: a real document uploaded as a file shows its verdict,
// PCR table and certificate chain; a debug document shows its failed check;
// garbage, uploaded or pasted, shows a clear error. Only loopback URLs are
// loaded.
func TestPageInChromium(t *testing.T) {
	chrome := testenv.LookPath(t, "chromium", "apt-get install chromium")
	_, ts := testServer(t, Config{AllowTimeOverride: true})
	if !strings.HasPrefix(ts.URL, "http://127.0.0.1:") {
		t.Fatalf("test server is not on loopback: %s", ts.URL)
	}

	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 2*time.Minute)
	defer cancel()

	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(id string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.ID(id)))
		must("text of #"+id, err)
		return strings.TrimSpace(s)
	}
	reset := chromedp.Evaluate[chromedp.Void](`document.getElementById('result').hidden = true; document.getElementById('error').hidden = true;`)
	abs := func(name string) string {
		p, err := filepath.Abs(filepath.Join("testdata", name))
		must("abs", err)
		return p
	}

	must("load page", chromedp.Do(ctx, chromedp.Navigate(ts.URL+"/"), chromedp.WaitVisible(chromedp.ID("form"))))

	// A real document, uploaded, verified at its verify_at.
	must("verify upload", chromedp.Do(ctx,
		reset,
		chromedp.SetUploadFiles(chromedp.ID("file"), []string{abs("veracruz-go-1.cbor")}),
		chromedp.SetValue(chromedp.ID("time"), "2022-11-09T23:00:00Z"),
		chromedp.Click(chromedp.ID("verify")),
		chromedp.WaitVisible(chromedp.ID("result")),
	))
	if v := text("verdict"); v != StatusAffirming {
		t.Fatalf("verdict %q, want affirming", v)
	}
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`Array.from(document.querySelectorAll('#pcrs tbody tr')).map(r => r.cells[0].textContent + '=' + r.cells[1].textContent)`))
	must("read PCR table", err)
	v, err := attest.Verify(readTestdata(t, "veracruz-go-1.cbor"), time.Date(2022, 11, 9, 23, 0, 0, 0, time.UTC), attest.VerifierConfig{})
	must("attest.Verify", err)
	var want []string
	idx := []int{}
	for k := range v.Claims().PCRs {
		n, _ := strconv.Atoi(k)
		idx = append(idx, n)
	}
	sort.Ints(idx)
	for _, i := range idx {
		want = append(want, strconv.Itoa(i)+"="+v.Claims().PCRs[strconv.Itoa(i)])
	}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Fatalf("PCR table:\n%s\nwant:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
	chain, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`Array.from(document.querySelectorAll('#chain tbody tr')).map(r => r.cells[1].textContent + '|' + r.cells[5].textContent)`))
	must("read chain table", err)
	if strings.Join(chain, ",") != "leaf|valid,intermediate|valid,intermediate|valid,intermediate|valid,root|valid" {
		t.Fatalf("chain table %v", chain)
	}
	if nonce := text("fields"); !strings.Contains(nonce, "c678c86135de539d183acff58886d98dfb9823041af9f934bf909ac0f8d96245") ||
		!strings.Contains(nonce, "i-04fd167167daacf3b-enc01845e97d0b3eb4e") {
		t.Fatalf("document fields %q lack the nonce or module_id", nonce)
	}
	if tok := text("token"); strings.Count(tok, ".") != 2 {
		t.Fatalf("token %q", tok)
	}

	// A debug-mode document: contraindicated, the debug check listed as failed.
	must("verify debug", chromedp.Do(ctx,
		reset,
		chromedp.SetUploadFiles(chromedp.ID("file"), []string{abs("evervault-3-beta-debug.cbor")}),
		chromedp.SetValue(chromedp.ID("time"), "2022-10-12T13:50:06.081Z"),
		chromedp.Click(chromedp.ID("verify")),
		chromedp.WaitVisible(chromedp.ID("failed-box")),
	))
	if v := text("verdict"); v != StatusContraindicated {
		t.Fatalf("debug verdict %q", v)
	}
	if f := text("failed"); !strings.Contains(f, "debug") {
		t.Fatalf("failed checks %q", f)
	}

	// Much later, the chain has expired: the chain table is not shown but
	// the failed check says why.
	must("verify expired", chromedp.Do(ctx,
		reset,
		chromedp.SetUploadFiles(chromedp.ID("file"), []string{abs("veracruz-go-1.cbor")}),
		chromedp.SetValue(chromedp.ID("time"), "2023-01-01T00:00:00Z"),
		chromedp.Click(chromedp.ID("verify")),
		chromedp.WaitVisible(chromedp.ID("failed-box")),
	))
	if f := text("failed"); !strings.Contains(f, "certificate_chain") || !strings.Contains(f, "expired") {
		t.Fatalf("expired: failed checks %q", f)
	}

	// A garbage file: a clear error, no result.
	garbage := filepath.Join(t.TempDir(), "garbage.bin")
	must("write garbage", os.WriteFile(garbage, []byte("\x00\x01this is not an attestation document"), 0o644))
	must("verify garbage file", chromedp.Do(ctx,
		reset,
		chromedp.SetUploadFiles(chromedp.ID("file"), []string{garbage}),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('time').value = ''`),
		chromedp.Click(chromedp.ID("verify")),
		chromedp.WaitVisible(chromedp.ID("error")),
	))
	if e := text("error"); !strings.Contains(e, "Bad Request") || !strings.Contains(e, "NSM attestation document") {
		t.Fatalf("garbage file: error %q", e)
	}

	// Pasted garbage (the file input cleared).
	must("verify pasted garbage", chromedp.Do(ctx,
		reset,
		chromedp.Evaluate[chromedp.Void](`document.getElementById('file').value = ''`),
		chromedp.SetValue(chromedp.ID("evidence"), "definitely not base64 or hex!"),
		chromedp.Click(chromedp.ID("verify")),
		chromedp.WaitVisible(chromedp.ID("error")),
	))
	if e := text("error"); !strings.Contains(e, "neither CBOR") {
		t.Fatalf("pasted garbage: error %q", e)
	}
	if hidden, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById('result').hidden`)); err != nil || !hidden {
		t.Fatalf("result shown with an error (%v)", err)
	}

	// Nothing given: the page says what to do.
	must("verify nothing", chromedp.Do(ctx,
		reset,
		chromedp.Evaluate[chromedp.Void](`document.getElementById('evidence').value = ''`),
		chromedp.Click(chromedp.ID("verify")),
		chromedp.WaitVisible(chromedp.ID("error")),
	))
	if e := text("error"); !strings.Contains(e, "Paste an attestation document or choose a file") {
		t.Fatalf("empty: error %q", e)
	}
}
