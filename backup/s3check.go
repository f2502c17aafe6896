package backup

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"pgnode/internal/envspec"
)

// s3Target is where a WAL-G prefix lives.
type s3Target struct {
	endpoint  *url.URL
	region    string
	pathStyle bool
	bucket    string
	prefix    string // object key prefix inside the bucket, no leading slash
}

func (c *Config) s3Target(walgPrefix string) (s3Target, error) {
	u, err := url.Parse(walgPrefix)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return s3Target{}, fmt.Errorf("%q is not an s3:// URL", walgPrefix)
	}
	ep := c.S3Endpoint
	if ep == "" {
		ep = "https://s3." + c.S3Region + ".amazonaws.com"
	}
	eu, err := url.Parse(ep)
	if err != nil {
		return s3Target{}, fmt.Errorf("S3_ENDPOINT %q: %w", ep, err)
	}
	return s3Target{endpoint: eu, region: c.S3Region, pathStyle: c.S3PathStyle, bucket: u.Host,
		prefix: strings.TrimLeft(u.Path, "/")}, nil
}

// s3Do sends one SigV4-signed request (empty payload) and returns status and body.
func s3Do(ctx context.Context, t s3Target, access, secret, method, key string, query url.Values) (int, []byte, error) {
	u := *t.endpoint
	path := "/" + key
	if t.pathStyle {
		path = "/" + t.bucket + path
		if key == "" {
			path = "/" + t.bucket
		}
	} else {
		u.Host = t.bucket + "." + u.Host
	}
	u.Path = path
	u.RawPath = awsEscapePath(path)
	u.RawQuery = canonicalQuery(query)
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return 0, nil, err
	}
	now := time.Now().UTC()
	amzDate := now.Format("20060102T150405Z")
	date := now.Format("20060102")
	payload := hex.EncodeToString(sha256.New().Sum(nil))
	req.Header.Set("x-amz-date", amzDate)
	req.Header.Set("x-amz-content-sha256", payload)
	signed := "host;x-amz-content-sha256;x-amz-date"
	canon := strings.Join([]string{method, u.RawPath, u.RawQuery,
		"host:" + u.Host + "\n" + "x-amz-content-sha256:" + payload + "\n" + "x-amz-date:" + amzDate + "\n",
		signed, payload}, "\n")
	scope := date + "/" + t.region + "/s3/aws4_request"
	sum := sha256.Sum256([]byte(canon))
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
	k := hmacSHA256([]byte("AWS4"+secret), date)
	k = hmacSHA256(k, t.region)
	k = hmacSHA256(k, "s3")
	k = hmacSHA256(k, "aws4_request")
	sig := hex.EncodeToString(hmacSHA256(k, toSign))
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+access+"/"+scope+", SignedHeaders="+signed+", Signature="+sig)
	client := &http.Client{Timeout: 15 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, nil
}

func hmacSHA256(key []byte, s string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return m.Sum(nil)
}

func awsEscape(s string, slash bool) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		case c == '/' && slash:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func awsEscapePath(p string) string { return awsEscape(p, true) }

func canonicalQuery(q url.Values) string {
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		for _, v := range q[k] {
			parts = append(parts, awsEscape(k, false)+"="+awsEscape(v, false))
		}
	}
	return strings.Join(parts, "&")
}

type s3Error struct {
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

// CheckStorage checks, before anything else runs, that the backup storage answers with
// the given key pair: the endpoint is reachable, the keys are known, the secret matches
// and the bucket exists. Errors name the variable to fix. It only lists (at most one
// object); it never writes.
func (c *Config) CheckStorage(ctx context.Context, keys Keys, walgPrefix string) error {
	accessVar, secretVar := "S3_ACCESS_KEY_RW", "S3_SECRET_KEY_RW"
	access, secret := c.S3AccessKeyRW, c.S3SecretKeyRW
	if keys == ReadOnly {
		accessVar, secretVar = "S3_ACCESS_KEY_RO", "S3_SECRET_KEY_RO"
		access, secret = c.S3AccessKeyRO, c.S3SecretKeyRO
	}
	t, err := c.s3Target(walgPrefix)
	if err != nil {
		return envspec.Errorf("S3_BACKUP_PATH", "s3://bucket/prefix/", "%v", err)
	}
	q := url.Values{"list-type": {"2"}, "max-keys": {"1"}, "prefix": {t.prefix}}
	status, body, err := s3Do(ctx, t, access.Value(), secret.Value(), http.MethodGet, "", q)
	if err != nil {
		return envspec.Errorf("S3_ENDPOINT", "a reachable S3 endpoint URL", "cannot reach %s: %v", t.endpoint.Redacted(), unwrapURLErr(err))
	}
	if status == http.StatusOK {
		return nil
	}
	var se s3Error
	_ = xml.Unmarshal(body, &se)
	switch se.Code {
	case "InvalidAccessKeyId":
		return envspec.Errorf(accessVar, "an access key the S3 service knows", "%s rejects the access key (InvalidAccessKeyId)", t.endpoint.Host)
	case "SignatureDoesNotMatch":
		return envspec.Errorf(secretVar, "the secret key belonging to "+accessVar, "%s rejects the signature: the secret key is wrong (SignatureDoesNotMatch)", t.endpoint.Host)
	case "NoSuchBucket":
		return envspec.Errorf("S3_BACKUP_PATH", "an existing bucket (create it first; pgnode never creates or deletes buckets)", "bucket %q does not exist at %s", t.bucket, t.endpoint.Host)
	case "AccessDenied":
		return envspec.Errorf(accessVar, "keys allowed to list s3://"+t.bucket+"/"+t.prefix, "%s denies listing the backup path (AccessDenied)", t.endpoint.Host)
	case "AuthorizationHeaderMalformed":
		return envspec.Errorf("S3_REGION", "the bucket's region", "%s: %s", se.Code, se.Message)
	}
	return fmt.Errorf("S3 answered HTTP %d %s %s for s3://%s/%s", status, se.Code, se.Message, t.bucket, t.prefix)
}

func unwrapURLErr(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}
