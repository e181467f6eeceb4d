package kms

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
)

// TestMetricsAndHealthz: /metrics counts requests by operation and code
// and authorization outcomes; /healthz is 200 while the store answers and
// 503 once it does not.
func TestMetricsAndHealthz(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.other.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: ck.KeyMetadata.Arn})
	wantCode(t, err, CodeAccessDenied)
	_, err = e.admin.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("alias/none")})
	wantCode(t, err, CodeNotFound)
	get := func(path string) (int, string) {
		resp, err := e.hs.Client().Get(e.hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/metrics")
	for _, want := range []string{
		`cloister_kms_requests_total{code="ok",operation="CreateKey"} 1`,
		`cloister_kms_requests_total{code="AccessDeniedException",operation="DescribeKey"} 1`,
		`cloister_kms_requests_total{code="NotFoundException",operation="DescribeKey"} 1`,
		`cloister_kms_authorization_total{operation="DescribeKey",outcome="denied"} 1`,
		`cloister_kms_request_duration_seconds_count{operation="DescribeKey"} 2`,
		`go_goroutines`,
	} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %s", code, want)
		}
	}
	if code, body := get("/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	e.store.Close()
	if code, _ := get("/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz with a closed store: %d", code)
	}
}
