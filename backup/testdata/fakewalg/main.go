// Command fakewalg is the recording stand-in for wal-g used by the backup package's tests
// (real WAL-G cannot be installed on the CI machines; the real-binary tests run when wal-g
// is on PATH). It is NOT a fake of S3: "backups" are small JSON files in a local directory.
//
// Everything lives next to the executable (tests copy the binary into a temp dir):
//
//	calls.jsonl     one JSON line per invocation: args, env, the config's access key and
//	                prefix, uid, start/end (unix ns), exit code
//	behavior.json   optional: {"fail": {"backup-push": "message"}, "hang": ["backup-push"],
//	                "sleep_ms": {"backup-push": 300}}; read on every invocation
//	store/<prefix>/ backups (basebackups/<name>.json) and WAL (wal/<segment>)
//	OVERLAP         created when two backup-push runs overlap on one prefix
//
// A hanging command ignores SIGTERM, so only SIGKILL ends it.
package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type behavior struct {
	Fail    map[string]string `json:"fail"`
	Hang    []string          `json:"hang"`
	SleepMs map[string]int    `json:"sleep_ms"`
}

type call struct {
	Args      []string `json:"args"`
	Env       []string `json:"env"`
	AccessKey string   `json:"access_key"`
	Prefix    string   `json:"prefix"`
	UID       int      `json:"uid"`
	Pid       int      `json:"pid"`
	Start     int64    `json:"start"`
	End       int64    `json:"end"`
	Exit      int      `json:"exit"`
}

type backupInfo struct {
	BackupName     string    `json:"backup_name"`
	Time           time.Time `json:"time"`
	WalFileName    string    `json:"wal_file_name"`
	StartTime      time.Time `json:"start_time"`
	FinishTime     time.Time `json:"finish_time"`
	DataDir        string    `json:"data_dir"`
	CompressedSize int64     `json:"compressed_size"`
	Uncompressed   int64     `json:"uncompressed_size"`
	IsPermanent    bool      `json:"is_permanent"`
}

var base string

func main() {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(1)
	}
	base = filepath.Dir(exe)
	c := call{Args: os.Args[1:], Env: os.Environ(), UID: os.Getuid(), Pid: os.Getpid(), Start: time.Now().UnixNano()}
	code := run(&c)
	c.End = time.Now().UnixNano()
	c.Exit = code
	record(c)
	os.Exit(code)
}

func record(c call) {
	b, _ := json.Marshal(c)
	f, err := os.OpenFile(filepath.Join(base, "calls.jsonl"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o666)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR: recording:", err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(b, '\n'))
}

func run(c *call) int {
	var rest []string
	var cfgPath string
	for i := 0; i < len(c.Args); i++ {
		a := c.Args[i]
		switch {
		case a == "--config" && i+1 < len(c.Args):
			cfgPath = c.Args[i+1]
			i++
		case strings.HasPrefix(a, "--walg-s3-prefix="):
			c.Prefix = strings.TrimPrefix(a, "--walg-s3-prefix=")
		default:
			rest = append(rest, a)
		}
	}
	if cfgPath == "" {
		fmt.Fprintln(os.Stderr, "ERROR: stand-in wal-g wants --config")
		return 1
	}
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR: reading config:", err)
		return 1
	}
	cfg := map[string]string{}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR: parsing config:", err)
		return 1
	}
	c.AccessKey = cfg["AWS_ACCESS_KEY_ID"]
	if c.Prefix == "" {
		c.Prefix = cfg["WALG_S3_PREFIX"]
	}
	if len(rest) == 0 {
		fmt.Fprintln(os.Stderr, "ERROR: no command")
		return 1
	}
	cmd := rest[0]
	if cmd == "delete" && len(rest) > 1 {
		cmd = "delete " + rest[1]
	}
	var bh behavior
	if b, err := os.ReadFile(filepath.Join(base, "behavior.json")); err == nil {
		if err := json.Unmarshal(b, &bh); err != nil {
			fmt.Fprintln(os.Stderr, "ERROR: behavior.json:", err)
			return 1
		}
	}
	for _, h := range bh.Hang {
		if h == cmd {
			signal.Ignore(syscall.SIGTERM)
			c.Exit = -1
			record(*c) // a killed process records nothing afterwards
			fmt.Println("INFO: hanging as told")
			for {
				time.Sleep(time.Hour)
			}
		}
	}
	if msg, ok := bh.Fail[cmd]; ok {
		fmt.Fprintln(os.Stderr, "ERROR: "+msg)
		return 1
	}
	store := filepath.Join(base, "store", strings.NewReplacer("/", "_", ":", "_").Replace(c.Prefix))
	sleep := time.Duration(bh.SleepMs[cmd]) * time.Millisecond
	switch cmd {
	case "backup-push":
		if len(rest) < 2 {
			fmt.Fprintln(os.Stderr, "ERROR: backup-push wants a data directory")
			return 1
		}
		return backupPush(store, rest[1], sleep)
	case "backup-list":
		return backupList(store, contains(rest, "--json"))
	case "delete retain":
		return deleteRetain(store, rest[2:])
	case "wal-push":
		if len(rest) < 2 {
			return 1
		}
		return copyFile(rest[1], filepath.Join(store, "wal", filepath.Base(rest[1])))
	case "wal-fetch":
		if len(rest) < 3 {
			return 1
		}
		if code := copyFile(filepath.Join(store, "wal", rest[1]), rest[2]); code != 0 {
			return 74
		}
		return 0
	case "wal-show":
		fmt.Println("+-----+------------+-----------------+--------+")
		fmt.Println("| TLI | PARENT TLI | SWITCHPOINT LSN | STATUS |")
		fmt.Println("| 1   | 0          | 0/0             | OK     |")
		return 0
	default:
		fmt.Fprintf(os.Stderr, "ERROR: the stand-in does not implement %q\n", cmd)
		return 1
	}
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func backupPush(store, dataDir string, sleep time.Duration) int {
	st, err := os.Stat(dataDir)
	if err != nil || !st.IsDir() {
		fmt.Fprintf(os.Stderr, "ERROR: data directory %s: %v\n", dataDir, err)
		return 1
	}
	if err := os.MkdirAll(filepath.Join(store, "basebackups"), 0o777); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		return 1
	}
	marker := filepath.Join(store, "push-running")
	f, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
	if err != nil {
		_ = os.WriteFile(filepath.Join(base, "OVERLAP"), []byte(time.Now().String()), 0o666)
	} else {
		f.Close()
		defer os.Remove(marker)
	}
	start := time.Now().UTC()
	fmt.Println("INFO: Starting a new backup of", dataDir)
	time.Sleep(sleep)
	var size int64
	_ = filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
			}
		}
		return nil
	})
	n := len(listBackups(store)) + 1
	name := fmt.Sprintf("base_%024X", n)
	info := backupInfo{BackupName: name, Time: time.Now().UTC(), WalFileName: fmt.Sprintf("%024X", n),
		StartTime: start, FinishTime: time.Now().UTC(), DataDir: dataDir, CompressedSize: size / 3, Uncompressed: size}
	b, _ := json.Marshal(info)
	if err := os.WriteFile(filepath.Join(store, "basebackups", name+".json"), b, 0o666); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		return 1
	}
	fmt.Println("INFO: Wrote backup with name", name)
	return 0
}

func listBackups(store string) []backupInfo {
	files, _ := filepath.Glob(filepath.Join(store, "basebackups", "*.json"))
	var out []backupInfo
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var bi backupInfo
		if json.Unmarshal(b, &bi) == nil {
			out = append(out, bi)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].BackupName < out[j].BackupName })
	return out
}

func backupList(store string, asJSON bool) int {
	bs := listBackups(store)
	if len(bs) == 0 {
		fmt.Fprintln(os.Stderr, "INFO: No backups found")
		return 0
	}
	if asJSON {
		b, _ := json.Marshal(bs)
		fmt.Println(string(b))
		return 0
	}
	fmt.Println("name modified wal_segment_backup_start")
	for _, b := range bs {
		fmt.Println(b.BackupName, b.Time.Format(time.RFC3339), b.WalFileName)
	}
	return 0
}

func deleteRetain(store string, args []string) int {
	// delete retain [FULL|FIND_FULL] N [--confirm]
	var n = -1
	confirm := false
	for _, a := range args {
		switch {
		case a == "--confirm":
			confirm = true
		case a == "FULL" || a == "FIND_FULL":
		default:
			v, err := strconv.Atoi(a)
			if err != nil {
				fmt.Fprintf(os.Stderr, "ERROR: bad argument %q\n", a)
				return 1
			}
			n = v
		}
	}
	if n < 1 {
		fmt.Fprintln(os.Stderr, "ERROR: retain count must be >= 1")
		return 1
	}
	bs := listBackups(store)
	if len(bs) <= n {
		fmt.Println("INFO: nothing to delete")
		return 0
	}
	for _, b := range bs[:len(bs)-n] {
		fmt.Println("INFO: will delete", b.BackupName)
		if confirm {
			_ = os.Remove(filepath.Join(store, "basebackups", b.BackupName+".json"))
		}
	}
	return 0
}

func copyFile(src, dst string) int {
	b, err := os.ReadFile(src)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		return 1
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o777); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		return 1
	}
	if err := os.WriteFile(dst, b, 0o666); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		return 1
	}
	return 0
}
