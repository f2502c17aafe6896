#!/usr/bin/env python3
"""Creates the demo's S3 bucket on MinIO (idempotent): one signed (AWS SigV4) PUT Bucket
request with only the Python standard library, so the demo needs no extra client image.
Environment: S3_ENDPOINT (http://minio:9000), S3_BUCKET, S3_REGION, MINIO_ROOT_USER,
MINIO_ROOT_PASSWORD (read from the *_FILE variants when set)."""
import datetime, hashlib, hmac, os, sys, time, urllib.error, urllib.parse, urllib.request


def env(name, default=None):
    path = os.environ.get(name + "_FILE")
    if path:
        with open(path) as f:
            return f.read().strip()
    value = os.environ.get(name, default)
    if value is None:
        sys.exit(f"mkbucket: {name} is not set")
    return value


def sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def put_bucket(endpoint, bucket, region, access, secret):
    url = urllib.parse.urlsplit(endpoint)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": url.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["PUT", "/" + bucket, "",
                           "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = sign(sign(sign(sign(("AWS4" + secret).encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"{endpoint.rstrip('/')}/{bucket}", method="PUT", data=b"")
    for h, v in headers.items():
        if h != "host":
            req.add_header(h, v)
    req.add_header("Authorization", f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def main():
    endpoint, bucket = env("S3_ENDPOINT"), env("S3_BUCKET")
    region = env("S3_REGION", "us-east-1")
    access, secret = env("MINIO_ROOT_USER"), env("MINIO_ROOT_PASSWORD")
    deadline = time.time() + 120
    while True:
        try:
            status, body = put_bucket(endpoint, bucket, region, access, secret)
        except OSError as e:  # MinIO not listening yet
            status, body = 0, str(e)
        if status == 200 or "BucketAlreadyOwnedByYou" in body:
            print(f"mkbucket: bucket {bucket} ready at {endpoint}")
            return
        if time.time() > deadline:
            sys.exit(f"mkbucket: could not create bucket {bucket} at {endpoint}: {status} {body[:300]}")
        time.sleep(1)


if __name__ == "__main__":
    main()
