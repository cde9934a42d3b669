package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/redis"
)

const auditUsage = `Usage:
  gateway audit verify [--data-dir DIR | --redis-url URL [--redis-prefix P]] [--audit-key-file F] [--json]

verify opens the state backend directly, chosen as gateway serve chooses it
(Redis when --redis-url is set, else the embedded state file in --data-dir),
checks the whole audit hash chain and prints the result. It exits 1 when a
record was changed, removed or reordered, naming the first broken record.
A chain written with --audit-key-file needs the same key file (HMAC).
The embedded state file is held by one process at a time: stop gateway serve
first, or ask the running gateway (GET /api/v1/audit/verify).

Flags can also be set as GATEWAY_DATA_DIR, GATEWAY_REDIS_URL, GATEWAY_REDIS_PREFIX,
GATEWAY_AUDIT_KEY_FILE.
`

// errAuditBroken is returned (exit status 1) when verify finds the chain
// broken; the details are on stdout.
var errAuditBroken = errors.New("audit chain broken")

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
	start := time.Now()
	res, err := log.Verify(ctx)
	if err != nil {
		return fmt.Errorf("verify %s: %w", source, err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else if res.OK {
		fmt.Fprintf(stdout, "audit log intact: %d records checked in %s (%s)\n", res.Records, time.Since(start).Round(time.Millisecond), source)
	} else {
		fmt.Fprintf(stdout, "audit log BROKEN: first broken record %s: %s (%d records read, %s)\n", res.FirstBroken, res.Reason, res.Records, source)
	}
	if !res.OK {
		return fmt.Errorf("%w at record %s", errAuditBroken, res.FirstBroken)
	}
	return nil
}
