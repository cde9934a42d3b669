package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
)

// Config is everything gateway serve needs: flags (each also GATEWAY_<NAME>)
// and the optional --config YAML file. Precedence: flag > env > default.
type Config struct {
	Listen                string
	DataDir               string
	S3Endpoint            string
	S3Bucket              string
	S3AccessKey           string
	S3SecretKey           gateway.Secret
	S3Region              string
	S3TLS                 bool
	RedisURL              string
	RedisPrefix           string
	Name                  string
	ConfigPath            string
	PublicBaseURL         string
	CORSOrigins           string
	MaxRequestBytes       int64
	MaxInstanceBytes      int64
	MaxStowParts          int
	MaxHeaderMemory       int64
	MaxHeaderElements     int
	MaxConcurrentStow     int
	MaxConcurrentRetrieve int
	MaxConnections        int
	ShutdownTimeout       time.Duration
	TransferWorkers       int
	TransferLease         time.Duration
	TransferRetryFor      time.Duration
	LogLevel              string
	AuditSyslog           string // URL; overrides audit_syslog.url of the file
	AuditKeyFile          string // --audit-key-file: keys of the audit chain (gateway.AuditKeys)
	DicomListen           string // --dicom-listen: DIMSE listener address, off when empty (dicom.go)
	DicomAETitle          string // --dicom-ae-title
	DicomTLSListen        string // --dicom-tls-listen: DIMSE over TLS (PS3.15 B.1), off when empty
	// AuditArchiveAfter seals audit records older than it into segments in
	// the blob store and trims them from the state store; 0 (default) off.
	AuditArchiveAfter  time.Duration
	AuditArchiveBucket string // S3 bucket of the segments; empty: --s3-bucket
	AuditRetentionDays int    // Object Lock on each segment for this long; 0: none
	AuditRetentionMode string // compliance or governance
	DeidentifyKeyFile  string // --deidentify-key-file: key of the UID mapping of peers[].deidentify

	// AuditKeys are read from AuditKeyFile by parseServeConfig; nil without one.
	AuditKeys *gateway.AuditKeys
	// DeidentifyKey is read from DeidentifyKeyFile by parseServeConfig.
	DeidentifyKey []byte

	File FileConfig // from --config
}

// FileConfig is the --config YAML. Unknown keys are an error.
type FileConfig struct {
	Peers     []gateway.Peer           `yaml:"peers"`
	Routes    []gateway.RouteRule      `yaml:"routes"`
	Auth      dicomweb.AuthConfig      `yaml:"auth"`
	TLS       dicomweb.TLSConfig       `yaml:"tls"`
	RateLimit dicomweb.RateLimitConfig `yaml:"rate_limit"`
	// TrustedProxies are the addresses or CIDRs of reverse proxies whose
	// X-Forwarded-For names the client; none by default, so a client
	// cannot put another address into the audit log.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// AuditSyslog exports every audit event to a syslog receiver, such as
	// an IHE ATNA Audit Record Repository.
	AuditSyslog AuditSyslogConfig `yaml:"audit_syslog"`
	// PreamblePolicy is what ingest does with an executable preamble
	// (CVE-2019-11687): refuse (default) or zero (gateway.PreamblePolicy).
	PreamblePolicy string `yaml:"preamble_policy"`
	// Dicom configures the DIMSE listener of --dicom-listen (dicom.go).
	Dicom DicomConfig `yaml:"dicom"`
	// Retention deletes the oldest studies by age or bytes held
	// (retention.go); none by default.
	Retention RetentionConfig `yaml:"retention"`
}

// AuditSyslogConfig is where audit events are exported (see
// gateway.SyslogExporter).
type AuditSyslogConfig struct {
	// URL is tls://host:port (RFC 5425; use this across a network: the
	// messages carry patient IDs), tcp://host:port or udp://host:port.
	URL string `yaml:"url"`
	// TLS: the repository's CA (default: the system roots) and a client
	// certificate when the repository asks for one (ATNA mutual TLS).
	TLS dicomweb.ClientTLSOptions `yaml:"tls"`
	// QueueSize bounds the events waiting while the repository is
	// unreachable (default 10,000); beyond it events are dropped from the
	// export (never from the audit log) and counted.
	QueueSize int `yaml:"queue_size"`
}

// secretFlag lets a gateway.Secret be a flag without printing it in -h.
type secretFlag struct{ s *gateway.Secret }

func (f secretFlag) String() string {
	if f.s == nil || *f.s == "" {
		return ""
	}
	return "[redacted]"
}
func (f secretFlag) Set(v string) error { *f.s = gateway.Secret(v); return nil }

// newServeFlags declares the serve flags on a fresh FlagSet bound to cfg.
func newServeFlags(cfg *Config, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8080", "HTTP address")
	fs.StringVar(&cfg.DataDir, "data-dir", "./data", "embedded storage and state")
	fs.StringVar(&cfg.S3Endpoint, "s3-endpoint", "", "S3 endpoint host:port; S3 storage when set")
	fs.StringVar(&cfg.S3Bucket, "s3-bucket", "dicom-gateway", "S3 bucket")
	fs.StringVar(&cfg.S3AccessKey, "s3-access-key", "", "S3 access key")
	fs.Var(secretFlag{&cfg.S3SecretKey}, "s3-secret-key", "S3 secret key")
	fs.StringVar(&cfg.S3Region, "s3-region", "", "S3 region")
	fs.BoolVar(&cfg.S3TLS, "s3-tls", false, "use HTTPS to the S3 endpoint")
	fs.StringVar(&cfg.RedisURL, "redis-url", "", "Redis state when set, e.g. redis://127.0.0.1:6379/0; a Redis Cluster as redis://h1:p1?addr=h2:p2&addr=h3:p3")
	fs.StringVar(&cfg.RedisPrefix, "redis-prefix", "gw:", "prefix of every Redis key this gateway writes")
	fs.StringVar(&cfg.Name, "name", "gateway", "this centre's name, used in audit and transfers")
	fs.StringVar(&cfg.ConfigPath, "config", "", "YAML file: peers, routing rules, tokens/roles, TLS")
	fs.StringVar(&cfg.PublicBaseURL, "public-base-url", "", "base URL clients reach this gateway at (for RetrieveURL/BulkDataURI behind a proxy)")
	fs.StringVar(&cfg.CORSOrigins, "cors-origins", "", "comma-separated origins of viewers served from elsewhere (e.g. https://ohif.example.nhs.uk) allowed to call DICOMweb from a browser")
	fs.Int64Var(&cfg.MaxRequestBytes, "max-request-bytes", 64<<30, "largest STOW-RS request body in bytes (0 = unlimited)")
	fs.Int64Var(&cfg.MaxInstanceBytes, "max-instance-bytes", 4<<30, "largest single instance in bytes")
	fs.IntVar(&cfg.MaxStowParts, "max-stow-parts", dicomweb.DefaultMaxStowParts, "most parts (instances) in one STOW-RS request; 413 beyond")
	fs.IntVar(&cfg.MaxHeaderElements, "max-header-elements", dicomcodec.DefaultHeaderLimits.MaxElements, "most elements (nested ones included) in one instance's header; its parsed memory is bounded at 256 bytes an element")
	fs.Int64Var(&cfg.MaxHeaderMemory, "max-header-memory", dicomcodec.DefaultHeaderMemory, "memory the headers of all concurrent uploads may hold together, in bytes; an instance that finds it spent waits up to 10s, then gets 503 with Retry-After (0 = no shared bound)")
	fs.IntVar(&cfg.MaxConcurrentStow, "max-concurrent-stow", dicomweb.DefaultMaxConcurrentStow, "STOW-RS requests served at once; beyond it 503 with Retry-After (0 = no bound)")
	fs.IntVar(&cfg.MaxConcurrentRetrieve, "max-concurrent-retrieve", dicomweb.DefaultMaxConcurrentRetrieve, "WADO-RS requests served at once; beyond it 503 with Retry-After (0 = no bound)")
	fs.IntVar(&cfg.MaxConnections, "max-connections", dicomweb.DefaultMaxConnections, "client connections open at once; beyond it a new connection is closed at once (0 = no cap)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "how long in-flight requests may take to finish on SIGTERM")
	fs.IntVar(&cfg.TransferWorkers, "transfer-workers", 4, "transfers sent at once by this replica")
	fs.DurationVar(&cfg.TransferLease, "transfer-lease", time.Minute, "how long a crashed replica's running transfer stays claimed before another takes it over")
	fs.DurationVar(&cfg.TransferRetryFor, "transfer-retry-for", 24*time.Hour, "how long a transfer that fails for a temporary reason (peer down, network) is retried, from its start or an admin's retry, before it fails")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.AuditKeyFile, "audit-key-file", "", "file with the secret keys of the audit chain (HMAC); keep it outside --data-dir and Redis")
	fs.StringVar(&cfg.AuditSyslog, "audit-syslog", "", "also export audit events as DICOM audit messages to this syslog receiver (tls://host:6514, tcp://… or udp://…)")
	fs.DurationVar(&cfg.AuditArchiveAfter, "audit-archive-after", 0, "seal audit records older than this (e.g. 720h) into hash-chained segments in the blob store, then trim them from the state store; 0 = off")
	fs.StringVar(&cfg.AuditArchiveBucket, "audit-archive-bucket", "", "S3 bucket for the audit segments (created with Object Lock when --audit-retention-days is set); default --s3-bucket")
	fs.IntVar(&cfg.AuditRetentionDays, "audit-retention-days", 0, "lock each audit segment with S3 Object Lock for this many days (needs a bucket with Object Lock); 0 = no lock")
	fs.StringVar(&cfg.AuditRetentionMode, "audit-retention-mode", "compliance", "Object Lock mode of audit segments: compliance (nobody can shorten it) or governance (users with the bypass permission can)")
	fs.StringVar(&cfg.DeidentifyKeyFile, "deidentify-key-file", "", "file with the secret key (hex, at least 32 bytes) that maps UIDs for peers with deidentify; keep it outside --data-dir and Redis, and keep it: a new key gives a resent study new UIDs")
	addDicomFlags(fs, cfg)
	return fs
}

// parseServeConfig parses args, then GATEWAY_* from getenv, then the YAML
// file, and validates the result.
func parseServeConfig(args []string, getenv func(string) string, stderr io.Writer) (*Config, error) {
	cfg := &Config{}
	fs := newServeFlags(cfg, stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := applyEnv(fs, getenv); err != nil {
		return nil, err
	}
	if cfg.ConfigPath != "" {
		f, err := os.Open(cfg.ConfigPath)
		if err != nil {
			return nil, fmt.Errorf("--config: %w", err)
		}
		defer f.Close()
		fc, err := parseFileConfig(f)
		if err != nil {
			return nil, fmt.Errorf("--config %s: %w", cfg.ConfigPath, err)
		}
		cfg.File = *fc
	}
	if cfg.AuditSyslog != "" {
		cfg.File.AuditSyslog.URL = cfg.AuditSyslog
	}
	if cfg.AuditKeyFile != "" {
		keys, err := loadAuditKeys(cfg.AuditKeyFile)
		if err != nil {
			return nil, err
		}
		cfg.AuditKeys = keys
	}
	if cfg.DeidentifyKeyFile != "" {
		key, err := loadDeidentifyKey(cfg.DeidentifyKeyFile)
		if err != nil {
			return nil, err
		}
		cfg.DeidentifyKey = key
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// applyEnv fills each flag not given on the command line from GATEWAY_<NAME>
// (--redis-url from GATEWAY_REDIS_URL). getenv is a parameter so tests need
// no real environment.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		key := "GATEWAY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(key); v != "" && !given[f.Name] {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", key, err))
			}
		}
	})
	return errors.Join(errs...)
}

// parseFileConfig decodes the --config YAML strictly: a misspelt key is an
// error, not a silently ignored setting.
func parseFileConfig(r io.Reader) (*FileConfig, error) {
	data, err := io.ReadAll(io.LimitReader(r, 4<<20))
	if err != nil {
		return nil, err
	}
	fc := &FileConfig{}
	if len(bytes.TrimSpace(data)) == 0 {
		return fc, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(fc); err != nil {
		return nil, err
	}
	return fc, nil
}

// Validate checks the configuration; each message names the setting to change.
func (c *Config) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("--name is empty"))
	}
	if c.S3Endpoint != "" && c.S3Bucket == "" {
		errs = append(errs, errors.New("--s3-bucket is empty"))
	}
	if c.MaxStowParts < 1 {
		errs = append(errs, fmt.Errorf("--max-stow-parts %d: at least 1", c.MaxStowParts))
	}
	if c.MaxHeaderElements < 1 {
		errs = append(errs, fmt.Errorf("--max-header-elements %d: at least 1", c.MaxHeaderElements))
	}
	if c.MaxHeaderMemory < 0 {
		errs = append(errs, fmt.Errorf("--max-header-memory %d: 0 (no shared bound) or more", c.MaxHeaderMemory))
	}
	if _, err := dicomweb.NewAuthenticator(c.File.Auth); err != nil {
		errs = append(errs, err)
	}
	if _, err := dicomweb.ServerTLS(c.File.TLS, c.File.Auth); err != nil {
		errs = append(errs, err)
	}
	if _, err := dicomweb.NewRateLimiter(c.File.RateLimit); err != nil {
		errs = append(errs, err)
	}
	if _, err := gateway.ParsePreamblePolicy(c.File.PreamblePolicy); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.File.Retention.Policy(); err != nil {
		errs = append(errs, err)
	}
	if err := dicomweb.ValidateCORSOrigins(splitList(c.CORSOrigins)); err != nil {
		errs = append(errs, err)
	}
	if !c.File.Auth.Enabled() && slices.Contains(splitList(c.CORSOrigins), "*") {
		errs = append(errs, errors.New("--cors-origins '*' without auth would let any web page the user opens read every study (without auth every loopback request acts as the local admin): list the viewer's origin, or configure auth"))
	}
	if c.MaxConnections < 0 {
		errs = append(errs, errors.New("--max-connections may not be negative (0 = no cap)"))
	}
	if !c.File.Auth.Enabled() && !isLoopback(c.Listen) {
		errs = append(errs, fmt.Errorf("--listen %s without auth: configure auth.tokens, auth.basic, auth.oidc or auth.mtls in --config, or bind a loopback address such as 127.0.0.1:8080", c.Listen))
	}
	for i, r := range c.File.Routes {
		if err := r.Validate(c.File.Peers); err != nil {
			errs = append(errs, fmt.Errorf("routes[%d]: %w", i, err))
		}
	}
	if !c.File.Auth.Enabled() && len(c.File.TrustedProxies) > 0 {
		errs = append(errs, errors.New("trusted_proxies without auth: without auth the gateway refuses every request a proxy relays (each would act as the local admin); configure auth to serve through a proxy"))
	}
	if _, err := dicomweb.ParseTrustedProxies(c.File.TrustedProxies); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.validateDicom()...)
	errs = append(errs, c.validateAuditArchive()...)
	seen := map[string]bool{}
	for i, p := range c.File.Peers {
		if err := p.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("peers[%d]: %w", i, err))
		}
		if seen[p.Name] {
			errs = append(errs, fmt.Errorf("peers[%d]: duplicate name %q", i, p.Name))
		}
		seen[p.Name] = true
	}
	return errors.Join(errs...)
}

// validateAuditArchive checks the --audit-archive-* and --audit-retention-*
// flags.
func (c *Config) validateAuditArchive() []error {
	var errs []error
	if c.AuditArchiveAfter < 0 {
		errs = append(errs, fmt.Errorf("--audit-archive-after %v: 0 (off) or more", c.AuditArchiveAfter))
	}
	if c.AuditArchiveAfter > 0 && c.AuditArchiveAfter < time.Hour {
		errs = append(errs, fmt.Errorf("--audit-archive-after %v: at least 1h (records younger than the clock skew must stay live)", c.AuditArchiveAfter))
	}
	if _, ok := auditRetentionMode(c.AuditRetentionMode); !ok {
		errs = append(errs, fmt.Errorf("--audit-retention-mode %q: compliance or governance", c.AuditRetentionMode))
	}
	if c.AuditRetentionDays < 0 {
		errs = append(errs, fmt.Errorf("--audit-retention-days %d: 0 (no lock) or more", c.AuditRetentionDays))
	}
	if c.AuditRetentionDays > 0 && c.AuditArchiveAfter == 0 {
		errs = append(errs, errors.New("--audit-retention-days without --audit-archive-after: nothing is sealed to lock"))
	}
	if c.AuditRetentionDays > 0 && c.S3Endpoint == "" {
		errs = append(errs, errors.New("--audit-retention-days needs --s3-endpoint: the filesystem store cannot lock objects (use an S3 bucket with Object Lock, see --audit-archive-bucket)"))
	}
	if c.AuditArchiveBucket != "" && c.S3Endpoint == "" {
		errs = append(errs, errors.New("--audit-archive-bucket needs --s3-endpoint"))
	}
	return errs
}

// auditRetentionMode maps --audit-retention-mode to the Object Lock mode.
func auditRetentionMode(flag string) (string, bool) {
	switch strings.ToLower(flag) {
	case "compliance":
		return gateway.ObjectLockCompliance, true
	case "governance":
		return gateway.ObjectLockGovernance, true
	}
	return "", false
}

// isLoopback reports whether every address listen can bind is a loopback one.
// An empty host (":8080") binds all interfaces, so it is not loopback.
func isLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
