package envspec

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type spec struct {
	Host  string `envconfig:"LAN_HOST" default:"" desc:"address"`
	Pass  Secret `envconfig:"POSTGRES_SUPERUSER_PASSWORD" desc:"password"`
	Inner struct {
		X string `envconfig:"NOT_WALKED"`
	}
	Embedded
}

type Embedded struct {
	Key Secret `envconfig:"S3_SECRET_KEY_RW" desc:"key"`
}

func TestSecretNeverPrints(t *testing.T) {
	s := Secret("hunter2-very-secret")
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "secret", s)
	j, _ := json.Marshal(struct{ S Secret }{s})
	for name, out := range map[string]string{
		"%v": fmt.Sprintf("%v", s), "%s": fmt.Sprintf("%s", s), "%#v": fmt.Sprintf("%#v", s),
		"slog": logged.String(), "json": string(j),
	} {
		if strings.Contains(out, "hunter2") {
			t.Errorf("%s shows the secret: %q", name, out)
		}
	}
	if s.Value() != "hunter2-very-secret" {
		t.Errorf("Value lost the secret")
	}
}

func TestLoadSecretFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "pw")
	if err := os.WriteFile(good, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		env     map[string]string
		wantErr string
		want    string
	}{
		{"file fills the secret", map[string]string{"POSTGRES_SUPERUSER_PASSWORD_FILE": good}, "", "from-file"},
		{"embedded secret too", map[string]string{"S3_SECRET_KEY_RW_FILE": good}, "", ""},
		{"missing file", map[string]string{"POSTGRES_SUPERUSER_PASSWORD_FILE": filepath.Join(dir, "nope")}, "POSTGRES_SUPERUSER_PASSWORD_FILE:", ""},
		{"both set", map[string]string{"POSTGRES_SUPERUSER_PASSWORD_FILE": good, "POSTGRES_SUPERUSER_PASSWORD": "x"}, "not both", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var s spec
			err := LoadSecretFiles(&s, func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want != "" && s.Pass.Value() != tc.want {
				t.Errorf("got %q", s.Pass.Value())
			}
			if tc.name == "embedded secret too" && s.Key.Value() != "from-file" {
				t.Errorf("embedded secret not filled")
			}
		})
	}
}

func TestSuggestClosestKnownName(t *testing.T) {
	vars := Vars(&spec{})
	got := Suggest([]string{"LAN_HOTS=x", "POSTGRES_SUPERUSER_PASWORD=y", "HOME=/root", "S3_SECRET_KEY_RW_FILE=/f", "LAN_HOST=z"},
		vars, []string{"LAN_", "POSTGRES_", "S3_"})
	want := map[string]string{"LAN_HOTS": "LAN_HOST", "POSTGRES_SUPERUSER_PASWORD": "POSTGRES_SUPERUSER_PASSWORD"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
}
