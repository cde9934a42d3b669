package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/blobwrap"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/redis"
	"github.com/dicom-gateway/gateway/storage/s3"
)

const auditUsage = `Usage:
  gateway audit verify [--data-dir DIR | --redis-url URL [--redis-prefix P]]
                       [--s3-endpoint H:P --s3-bucket B --s3-access-key K --s3-secret-key S [--s3-region R] [--s3-tls]]
                       [--audit-archive-bucket B] [--audit-key-file F] [--json]

verify opens the state backend directly, chosen as gateway serve chooses it
(Redis when --redis-url is set, else the embedded state file in --data-dir),
and the blob store holding the sealed audit segments (--audit-archive-after:
S3 when --s3-endpoint is set, else --data-dir/blobs). It checks every
segment in order (its records' chain and its seal), the link from the last
segment into the live log and the live log, and prints the result. It exits
1 when a record or segment was changed, removed or reordered, naming the
first broken record.
A chain written with --audit-key-file needs the same key file (HMAC).
The embedded state file is held by one process at a time: stop gateway serve
first, or ask the running gateway (GET /api/v1/audit/verify).

Flags can also be set as GATEWAY_DATA_DIR, GATEWAY_REDIS_URL, GATEWAY_REDIS_PREFIX,
GATEWAY_AUDIT_KEY_FILE, GATEWAY_S3_ENDPOINT, …
`

// errAuditBroken is returned (exit status 1) when verify finds the chain
// broken; the details are on stdout.
var errAuditBroken = errors.New("audit chain broken")

// openSegmentStore opens the blob store of the audit segments as gateway
// serve does, without creating anything: nil when there is none (no S3
// and no blobs directory under dataDir).
func openSegmentStore(dataDir string, cfg s3.Config, archiveBucket string) (gateway.BlobStore, error) {
	if cfg.Endpoint != "" {
		if archiveBucket != "" {
			cfg.Bucket = archiveBucket
		}
		store, err := s3.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("--s3-endpoint: %w", err)
		}
		return blobwrap.CheckKeys(store), nil
	}
	dir := filepath.Join(dataDir, "blobs")
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	return blobwrap.CheckKeys(segmentFiles{root}), nil
}

// segmentFiles reads audit segments from a filesystem blob directory
// without opening it as a store: filesystem.New clears the temporary
// files of a gateway that may be running on it. Reading is all verify
// does; the other methods refuse.
type segmentFiles struct{ root *os.Root }

func (f segmentFiles) Get(_ context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if offset != 0 || length >= 0 {
		return nil, fmt.Errorf("get %s: ranges not supported here: %w", key, gateway.ErrInvalid)
	}
	file, err := f.root.Open(key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get %s: %w", key, gateway.ErrNotFound)
	}
	return file, err
}

func (f segmentFiles) Walk(ctx context.Context, prefix string, fn func(gateway.BlobInfo) error) error {
	dir := strings.TrimSuffix(prefix, "/")
	err := fs.WalkDir(f.root.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasPrefix(p, prefix) {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return fn(gateway.BlobInfo{Key: p, Size: info.Size(), ModTime: info.ModTime()})
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (f segmentFiles) Put(_ context.Context, key string, _ io.Reader) (int64, error) {
	return 0, fmt.Errorf("put %s: read-only: %w", key, errors.ErrUnsupported)
}

func (f segmentFiles) Stat(_ context.Context, key string) (gateway.BlobInfo, error) {
	return gateway.BlobInfo{}, fmt.Errorf("stat %s: read-only view: %w", key, errors.ErrUnsupported)
}

func (f segmentFiles) Delete(_ context.Context, key string) error {
	return fmt.Errorf("delete %s: read-only: %w", key, errors.ErrUnsupported)
}

// runAudit is the gateway audit subcommand.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, auditUsage)
		return nil
	}
	if args[0] != "verify" {
		fmt.Fprint(stderr, auditUsage)
		return fmt.Errorf("unknown audit command %q", args[0])
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", "./data", "embedded storage and state")
	redisURL := fs.String("redis-url", "", "Redis state when set, e.g. redis://127.0.0.1:6379/0")
	redisPrefix := fs.String("redis-prefix", "gw:", "prefix of the gateway's Redis keys")
	keyFile := fs.String("audit-key-file", "", "the audit chain's key file, as given to gateway serve")
	var s3cfg s3.Config
	fs.StringVar(&s3cfg.Endpoint, "s3-endpoint", "", "S3 endpoint host:port of the blob store, as given to gateway serve")
	fs.StringVar(&s3cfg.Bucket, "s3-bucket", "dicom-gateway", "S3 bucket")
	fs.StringVar(&s3cfg.AccessKey, "s3-access-key", "", "S3 access key")
	fs.Var(secretFlag{&s3cfg.SecretKey}, "s3-secret-key", "S3 secret key")
	fs.StringVar(&s3cfg.Region, "s3-region", "", "S3 region")
	fs.BoolVar(&s3cfg.TLS, "s3-tls", false, "use HTTPS to the S3 endpoint")
	archiveBucket := fs.String("audit-archive-bucket", "", "S3 bucket of the audit segments, as given to gateway serve")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := applyEnv(fs, os.Getenv); err != nil {
		return err
	}

	var keys *gateway.AuditKeys
	if *keyFile != "" {
		var err error
		if keys, err = loadAuditKeys(*keyFile); err != nil {
			return err
		}
	}
	var log interface {
		gateway.AuditLog
		SetKeys(*gateway.AuditKeys)
	}
	source := ""
	if *redisURL != "" {
		c, err := redis.Open(*redisURL, *redisPrefix)
		if err != nil {
			return fmt.Errorf("--redis-url: %w", err)
		}
		defer c.Close()
		log, source = redis.NewAuditLog(c, ""), "redis (prefix "+*redisPrefix+")"
	} else {
		path := filepath.Join(*dataDir, "state.db")
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("--data-dir %s: no state file: %w", *dataDir, err)
		}
		db, err := bolt.Open(path)
		if err != nil {
			return fmt.Errorf("%w (is gateway serve running on this --data-dir? stop it, or use GET /api/v1/audit/verify)", err)
		}
		defer db.Close()
		if log, err = bolt.NewAuditLog(db, ""); err != nil {
			return err
		}
		source = path
	}

	log.SetKeys(keys)
	segments, err := openSegmentStore(*dataDir, s3cfg, *archiveBucket)
	if err != nil {
		return err
	}
	start := time.Now()
	var res gateway.VerifyResult
	if segments == nil {
		// No blob store here: only a log that was never sealed can be checked.
		base, _, err := log.(gateway.AuditArchiveBackend).AuditBase(ctx)
		if err != nil {
			return fmt.Errorf("verify %s: %w", source, err)
		}
		if base > 0 {
			return fmt.Errorf("records 1 to %d were sealed into segments: give their blob store (--s3-endpoint …, or the --data-dir with blobs/)", base)
		}
		res, err = log.Verify(ctx)
		if err != nil {
			return fmt.Errorf("verify %s: %w", source, err)
		}
	} else {
		archive := &gateway.AuditArchive{Live: log.(gateway.AuditArchiveBackend), Blobs: segments, Keys: keys}
		if res, err = archive.Verify(ctx); err != nil {
			return fmt.Errorf("verify %s: %w", source, err)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else if res.OK {
		fmt.Fprintf(stdout, "audit log intact: %d records checked in %s (%s)", res.Records, time.Since(start).Round(time.Millisecond), source)
		if res.Segments > 0 {
			fmt.Fprintf(stdout, "; %d sealed in %d segments, %d both sealed and live", res.Sealed, res.Segments, res.InBoth)
		}
		fmt.Fprintln(stdout)
	} else {
		fmt.Fprintf(stdout, "audit log BROKEN: first broken record %s: %s (%d records read, %s)\n", res.FirstBroken, res.Reason, res.Records, source)
	}
	if !res.OK {
		return fmt.Errorf("%w at record %s", errAuditBroken, res.FirstBroken)
	}
	return nil
}
