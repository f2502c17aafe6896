package backup

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"pgnode/ci/testenv"
	"pgnode/internal/envspec"
)

// minioConfig points a Config at a real MinIO on loopback with a fresh bucket.
func minioConfig(t *testing.T, mc *testenv.Minio, bucket, walg string) Config {
	t.Helper()
	cfg := testConfig(walg)
	cfg.S3Endpoint = mc.Endpoint
	cfg.S3PathStyle = true
	cfg.S3BackupPath = "s3://" + bucket + "/pgnode"
	cfg.S3AccessKeyRW, cfg.S3SecretKeyRW = envspec.Secret(mc.RootUser), envspec.Secret(mc.RootPass)
	cfg.S3AccessKeyRO, cfg.S3SecretKeyRO = envspec.Secret(mc.RootUser), envspec.Secret(mc.RootPass)
	makeBucket(t, cfg, bucket)
	return cfg
}

func makeBucket(t *testing.T, cfg Config, bucket string) {
	t.Helper()
	tgt, err := cfg.s3Target("s3://" + bucket)
	if err != nil {
		t.Fatal(err)
	}
	status, body, err := s3Do(context.Background(), tgt, cfg.S3AccessKeyRW.Value(), cfg.S3SecretKeyRW.Value(), http.MethodPut, "", nil)
	if err != nil || (status != 200 && !strings.Contains(string(body), "BucketAlreadyOwnedByYou")) {
		t.Fatalf("creating bucket %s: %d %s %v", bucket, status, body, err)
	}
}

// Bad S3 settings against a real MinIO: each gives one line naming the variable to fix.
func TestCheckStorageMinio(t *testing.T) {
	mc := testenv.StartMinio(t, ports)
	good := minioConfig(t, mc, "pgnode-check", "wal-g")
	prefix := good.Prefix("bk-test", 15)
	if err := good.CheckStorage(context.Background(), ReadWrite, prefix); err != nil {
		t.Fatalf("good settings: %v", err)
	}
	if err := good.CheckStorage(context.Background(), ReadOnly, prefix); err != nil {
		t.Fatalf("good settings (RO): %v", err)
	}
	for _, tc := range []struct {
		name    string
		mut     func(c *Config)
		keys    Keys
		wantVar string
		want    string
	}{
		{"unreachable endpoint", func(c *Config) { c.S3Endpoint = "http://127.0.0.1:1" }, ReadWrite, "S3_ENDPOINT", "cannot reach"},
		{"unknown access key", func(c *Config) { c.S3AccessKeyRW = "NOSUCHKEY" }, ReadWrite, "S3_ACCESS_KEY_RW", "InvalidAccessKeyId"},
		{"wrong secret", func(c *Config) { c.S3SecretKeyRW = "wrong-secret-1234" }, ReadWrite, "S3_SECRET_KEY_RW", "secret key is wrong"},
		{"wrong RO secret", func(c *Config) { c.S3SecretKeyRO = "wrong-secret-1234" }, ReadOnly, "S3_SECRET_KEY_RO", "secret key is wrong"},
		{"missing bucket", func(c *Config) { c.S3BackupPath = "s3://no-such-bucket/pgnode" }, ReadWrite, "S3_BACKUP_PATH", `bucket "no-such-bucket" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mut(&c)
			err := c.CheckStorage(context.Background(), tc.keys, c.Prefix("bk-test", 15))
			var fe *envspec.FieldError
			if !errors.As(err, &fe) || fe.Var != tc.wantVar || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v; want %s … %s", err, tc.wantVar, tc.want)
			}
			if strings.Contains(err.Error(), mc.RootPass) || strings.Contains(err.Error(), "wrong-secret") {
				t.Fatalf("error leaks a secret: %v", err)
			}
		})
	}
}

// A manager started with a missing bucket logs one clear error, reports it in Status and
// the metrics, keeps running, and never deletes anything.
func TestManagerWithBadStorage(t *testing.T) {
	logs := captureLogs(t)
	mc := testenv.StartMinio(t, ports)
	consul := testenv.StartConsul(t, ports)
	bin, dir := standIn(t)
	cfg := minioConfig(t, mc, "pgnode-exists", bin)
	cfg.S3BackupPath = "s3://pgnode-missing/pgnode"
	m, l := newTestManager(t, cfg, "node-a", consul.Addr)
	l.on.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Start(ctx) }()
	testenv.WaitFor(t, 20*time.Second, "storage check", func() error {
		if m.Status().StorageError == "" {
			return errors.New("not yet")
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Start returned %v", err)
	}
	st := m.Status()
	if !strings.Contains(st.Problem, `S3_BACKUP_PATH: bucket "pgnode-missing" does not exist`) {
		t.Fatalf("problem %q", st.Problem)
	}
	if n := strings.Count(logs.String(), "backup storage check failed"); n != 1 {
		t.Fatalf("want the storage error logged once, got %d", n)
	}
	if !strings.Contains(m.metricsText(time.Now()), "pgnode_backup_storage_ok 0\n") {
		t.Fatal("metrics do not show the storage problem")
	}
	if len(callsWith(readCalls(t, dir), "delete")) != 0 {
		t.Fatal("deletion with bad storage")
	}
}
