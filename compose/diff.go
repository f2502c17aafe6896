package compose

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

var jsonSecretLine = regexp.MustCompile(`^(\s*"(encrypt|token|acl_token)"\s*:\s*)"[^"]*"(,?)$`)

// redactLines replaces secret values by [REDACTED]; a secret whose value differs from
// the other side's is shown as [REDACTED: changed] so a diff still reveals the change.
func redactLines(lines []string, other map[string]string) ([]string, map[string]string) {
	vals := map[string]string{}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l
		key, val := "", ""
		if k, v, ok := strings.Cut(l, "="); ok && isSecretKey(k) && !strings.HasPrefix(l, "#") {
			key, val = k, v
			out[i] = k + "=%s"
		} else if m := jsonSecretLine.FindStringSubmatch(l); m != nil {
			key, val = m[2], l
			out[i] = m[1] + `"%s"` + m[3]
		}
		if key == "" {
			continue
		}
		vals[key] = val
		mark := "[REDACTED]"
		if o, seen := other[key]; other != nil && (!seen || o != val) {
			mark = "[REDACTED: changed]"
		}
		out[i] = fmt.Sprintf(out[i], mark)
	}
	return out, vals
}

func splitLines(b []byte) []string {
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// BundleDiff shows, per file, what shipping b over the current remote files changes, with
// secrets redacted.
func BundleDiff(node string, cur map[string][]byte, b *Bundle) string {
	paths := map[string]bool{}
	for p := range cur {
		paths[p] = true
	}
	for p := range b.Files {
		paths[p] = true
	}
	var sorted []string
	for p := range paths {
		sorted = append(sorted, p)
	}
	sort.Strings(sorted)
	var sb strings.Builder
	for _, p := range sorted {
		old, hadOld := cur[p]
		nf, hasNew := b.Files[p]
		if hadOld && hasNew && string(old) == string(nf.Data) {
			continue
		}
		fmt.Fprintf(&sb, "--- %s:%s\n+++ %s (new)\n", node, p, p)
		oldRed, oldVals := redactLines(splitLines(old), nil)
		newRed, _ := redactLines(splitLines(nf.Data), oldVals)
		if !hasNew {
			newRed = nil
		}
		for _, l := range lineDiff(oldRed, newRed) {
			sb.WriteString(l + "\n")
		}
	}
	return sb.String()
}

// lineDiff is a minimal LCS line diff ("-", "+" and changed lines only).
func lineDiff(a, b []string) []string {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < n && j < m {
		switch {
		case a[i] == b[j]:
			i++
			j++
		case lcs[i+1][j] >= lcs[i][j+1]:
			out = append(out, "- "+a[i])
			i++
		default:
			out = append(out, "+ "+b[j])
			j++
		}
	}
	for ; i < n; i++ {
		out = append(out, "- "+a[i])
	}
	for ; j < m; j++ {
		out = append(out, "+ "+b[j])
	}
	return out
}
