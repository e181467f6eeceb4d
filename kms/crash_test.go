package kms

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/kms/sigv4"
	"github.com/cloister/cloister/kms/store"
)

// Environment of the re-executed child server.
const (
	envCrashChild = "CLOISTER_KMS_CRASH_CHILD"
	envCrashStore = "CLOISTER_KMS_CRASH_STORE"
	envCrashAddr  = "CLOISTER_KMS_CRASH_ADDR"
)

func TestMain(m *testing.M) {
	if os.Getenv(envCrashChild) == "1" {
		os.Exit(crashChild())
	}
	os.Exit(m.Run())
}

// crashChild serves the key service until killed; it prints "ready" once
// listening.
func crashChild() int {
	ctx := context.Background()
	root, err := store.LoadRootKey("")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	st, err := store.Open(ctx, os.Getenv(envCrashStore), root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	creds, _ := sigv4.NewCredentials(testCreds...)
	srv, err := NewServer(Config{Store: st, Credentials: creds, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	l, err := net.Listen("tcp", os.Getenv(envCrashAddr))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Println("ready")
	if err := srv.Serve(ctx, l, ServeOptions{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

type crashChildProc struct {
	cmd *exec.Cmd
}

func startChild(t *testing.T, spec, rootHex, addr string) *crashChildProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envCrashChild+"=1", envCrashStore+"="+spec, envCrashAddr+"="+addr, store.RootKeyEnv+"="+rootHex)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child did not start: %q %v", line, err)
	}
	return &crashChildProc{cmd: cmd}
}

func (c *crashChildProc) kill9() {
	c.cmd.Process.Kill() // SIGKILL
	c.cmd.Wait()
}

type ackedDataKey struct {
	keyID     string
	plaintext []byte
	blob      []byte
	ec        map[string]string
}

func TestCrashSafetyBolt(t *testing.T) {
	crashSafety(t, "bbolt:"+filepath.Join(t.TempDir(), "kms.db"))
}

func TestCrashSafetyPostgres(t *testing.T) {
	crashSafety(t, testenv.Postgres(t, "kms"))
}

// crashSafety drives concurrent CreateKey and GenerateDataKey against a
// child server, kill -9s it after a number of acknowledged operations while
// requests are still in flight, restarts it on the same store and checks
// that every acknowledged key exists and every acknowledged data key
// decrypts to the plaintext that was returned.
func crashSafety(t *testing.T, spec string) {
	root := make([]byte, 32)
	rand.Read(root)
	rootHex := hex.EncodeToString(root)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	child := startChild(t, spec, rootHex, addr)
	client := awskms.New(awskms.Options{Region: "us-east-1", BaseEndpoint: aws.String("http://" + addr), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDADMIN", "admin-secret", "")})

	var (
		mu       sync.Mutex
		keys     []string
		dataKeys []ackedDataKey
		acks     int
	)
	const killAfter = 60
	killed := make(chan struct{})
	var once sync.Once
	ack := func() {
		acks++
		if acks == killAfter {
			once.Do(func() { child.kill9(); close(killed) })
		}
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ctx := context.Background()
			for i := 0; ; i++ {
				select {
				case <-killed:
					return
				default:
				}
				if i%3 == 0 {
					out, err := client.CreateKey(ctx, &awskms.CreateKeyInput{Description: aws.String(fmt.Sprintf("w%d-%d", w, i))})
					if err != nil {
						continue // in flight when the server died: not acknowledged
					}
					mu.Lock()
					keys = append(keys, *out.KeyMetadata.KeyId)
					ack()
					mu.Unlock()
					continue
				}
				mu.Lock()
				var k string
				if len(keys) > 0 {
					k = keys[(i*7+w)%len(keys)]
				}
				mu.Unlock()
				if k == "" {
					continue
				}
				ec := map[string]string{"worker": fmt.Sprint(w)}
				out, err := client.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: aws.String(k), NumberOfBytes: aws.Int32(32), EncryptionContext: ec})
				if err != nil {
					continue
				}
				mu.Lock()
				dataKeys = append(dataKeys, ackedDataKey{k, out.Plaintext, out.CiphertextBlob, ec})
				ack()
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	<-killed
	if len(keys) == 0 || len(dataKeys) == 0 {
		t.Fatalf("nothing acknowledged before the kill: %d keys, %d data keys", len(keys), len(dataKeys))
	}

	child = startChild(t, spec, rootHex, addr)
	defer child.kill9()
	ctx := context.Background()
	for _, k := range keys {
		if _, err := client.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(k)}); err != nil {
			t.Errorf("acknowledged key %s lost: %v", k, err)
		}
	}
	for _, d := range dataKeys {
		out, err := client.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: d.blob, KeyId: aws.String(d.keyID), EncryptionContext: d.ec})
		if err != nil {
			t.Errorf("acknowledged data key of %s does not decrypt: %v", d.keyID, err)
			continue
		}
		if !bytes.Equal(out.Plaintext, d.plaintext) {
			t.Errorf("data key of %s decrypts to different bytes", d.keyID)
		}
	}
	t.Logf("%d keys and %d data keys acknowledged before kill -9; all survived", len(keys), len(dataKeys))
}
