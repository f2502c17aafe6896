// Package envspec holds what every package's environment configuration shares: the Secret
// type (never printed, accepts NAME_FILE), the error that names a variable and the expected
// form, and the walk over envconfig struct tags used by `pgnode env` and by the typo check.
package envspec

import (
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"sort"
	"strings"
)

// Secret is a string that never shows itself: fmt, slog and JSON/YAML marshalling of the
// type print "[REDACTED]". Use Value() where the real value is needed (a 0600 file).
type Secret string

// Redacted is what a secret looks like wherever it is shown.
const Redacted = "[REDACTED]"

// Value returns the secret itself.
func (s Secret) Value() string { return string(s) }

// IsSet reports whether the secret has a value.
func (s Secret) IsSet() bool { return s != "" }

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return Redacted
}

// GoString keeps %#v from printing the secret.
func (s Secret) GoString() string { return s.String() }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText keeps encoders from printing the secret.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// FieldError is a configuration error: the variable, the problem with its value, and the
// form that is expected. Its message is one line.
type FieldError struct {
	Var      string
	Problem  string
	Expected string
}

func (e *FieldError) Error() string {
	if e.Expected == "" {
		return fmt.Sprintf("%s: %s", e.Var, e.Problem)
	}
	return fmt.Sprintf("%s: %s (expected %s)", e.Var, e.Problem, e.Expected)
}

// Errorf builds a FieldError.
func Errorf(variable, expected, format string, args ...any) error {
	return &FieldError{Var: variable, Problem: fmt.Sprintf(format, args...), Expected: expected}
}

// Var describes one environment variable of a config struct.
type Var struct {
	Name     string
	Default  string
	Desc     string
	Secret   bool
	Required bool
	field    reflect.Value
}

// Vars lists the variables of a pointer to a struct whose fields carry `envconfig`,
// `default` and `desc` tags; anonymous embedded structs are walked (without a prefix, as
// envconfig does).
func Vars(spec any) []Var {
	v := reflect.ValueOf(spec)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	var out []Var
	walk(v, &out)
	return out
}

var secretType = reflect.TypeOf(Secret(""))

func walk(v reflect.Value, out *[]Var) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		fv := v.Field(i)
		if f.Tag.Get("ignored") == "true" || !f.IsExported() {
			continue
		}
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			walk(fv, out)
			continue
		}
		name := f.Tag.Get("envconfig")
		if name == "" {
			continue
		}
		*out = append(*out, Var{
			Name: name, Default: f.Tag.Get("default"), Desc: f.Tag.Get("desc"),
			Secret: f.Type == secretType, Required: f.Tag.Get("required") == "true", field: fv,
		})
	}
}

// LoadSecretFiles fills every Secret field that is empty from NAME_FILE when that variable
// is set (Docker secrets convention). Setting both NAME and NAME_FILE is an error.
func LoadSecretFiles(spec any, lookup func(string) (string, bool)) error {
	for _, v := range Vars(spec) {
		if !v.Secret {
			continue
		}
		path, ok := lookup(v.Name + "_FILE")
		if !ok || path == "" {
			continue
		}
		if direct, ok := lookup(v.Name); ok && direct != "" {
			return Errorf(v.Name+"_FILE", "either "+v.Name+" or "+v.Name+"_FILE, not both", "both %s and %s_FILE are set", v.Name, v.Name)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return Errorf(v.Name+"_FILE", "a readable file holding the secret", "cannot read %q: %v", path, unwrapPathErr(err))
		}
		val := strings.TrimRight(string(b), "\r\n")
		if val == "" {
			return Errorf(v.Name+"_FILE", "a file holding a non-empty secret", "file %q is empty", path)
		}
		v.field.SetString(val)
	}
	return nil
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// Suggest returns, for every variable in environ whose name looks like one of ours (shares
// a known prefix family) but is not known, the closest known name. Known names include
// NAME_FILE of secrets.
func Suggest(environ []string, known []Var, families []string, alsoKnown ...string) map[string]string {
	names := map[string]bool{}
	for _, v := range known {
		names[v.Name] = true
		if v.Secret {
			names[v.Name+"_FILE"] = true
		}
	}
	for _, n := range alsoKnown {
		names[n] = true
	}
	out := map[string]string{}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if names[name] {
			continue
		}
		ours := false
		for _, f := range families {
			if strings.HasPrefix(name, f) {
				ours = true
				break
			}
		}
		if !ours {
			continue
		}
		best, bestD := "", 1<<30
		keys := make([]string, 0, len(names))
		for k := range names {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if d := levenshtein(name, k); d < bestD {
				best, bestD = k, d
			}
		}
		out[name] = best
	}
	return out
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
