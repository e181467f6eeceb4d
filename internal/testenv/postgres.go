package testenv

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var databases atomic.Int64

// Postgres returns the URL of a new, empty database on the server named by
// $CLOISTER_TEST_POSTGRES (scripts/test.sh starts a throw-away one and sets
// it), named after prefix; the database is dropped when the test ends. A
// missing server is handled by Require: a failure under CI.
func Postgres(t testing.TB, prefix string) string {
	t.Helper()
	base := os.Getenv("CLOISTER_TEST_POSTGRES")
	Require(t, base != "", "PostgreSQL ($CLOISTER_TEST_POSTGRES)", "run scripts/test.sh, which starts a throw-away server, or set CLOISTER_TEST_POSTGRES=postgres://...")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connecting to %s: %v", base, err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("cloister_%s_%d_%d", strings.ReplaceAll(prefix, "-", "_"), time.Now().UnixNano(), databases.Add(1))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if c, err := pgx.Connect(context.Background(), base); err == nil {
			c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(context.Background())
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}
