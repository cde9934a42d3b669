// Command bench measures the gateway side by side with Orthanc (and its
// DICOMweb plugin) on the same synthetic data in one run, and prints one
// markdown table per part, with gateway/orthanc ratios:
//
//	(a) STOW-RS of 1,000 small instances (160x160x16-bit, about 51 KB)
//	(b) STOW-RS of a 200-slice CT study (512x512x16-bit)
//	(c) peak RSS while one 1 GiB multi-frame instance streams in
//	(d) QIDO-RS latency on N loaded studies (N chosen from measured load rates)
//	(e) WADO-RS: whole-study retrieve MB/s, 1,000-instance series metadata
//	    latency, single-frame latency
//
// It builds nothing: it runs bin/gateway (go build -o bin/gateway
// ./cmd/gateway) twice, once with the embedded default in a temporary
// --data-dir and once on Redis + MinIO when GATEWAY_TEST_REDIS_URL and
// GATEWAY_TEST_S3_* are set (scripts/testenv.sh sets them), and Orthanc with
// a temporary configuration. Everything it starts it stops, also on Ctrl-C.
//
//	scripts/testenv.sh go run ./cmd/bench -out bench.md
//	scripts/testenv.sh go run ./cmd/bench -small   # 1–2 minutes
//
// Two subcommands: "transfer" (make bench-transfer) forwards studies
// gateway→gateway and Orthanc→Orthanc on loopback and through an emulated
// WAN link (transfer.go); "wanproxy" runs that link emulator on its own.
//
// Figures from a shared machine are noisy: each table carries the load
// average at its start and end.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/internal/synth"
)

type config struct {
	gatewayBin, orthancBin, orthancPlugin string
	out                                   string
	parts, targets                        string
	small, keep                           bool
	cleanup                               string
	conc, batch, loadBatch                int
	smallN, ctN, bigFrames                int
	rounds                                int
	qidoMax, qidoProbe, queries           int
	qidoBudget, queryTime                 time.Duration
	retrieveReps, metaReps, frames        int
	rssCap                                int64
	seed                                  uint64
}

type bench struct {
	cfg     config
	client  *http.Client
	targets []*target
	report  strings.Builder
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "transfer":
			os.Exit(transferMain(os.Args[2:], os.Stdout, os.Stderr))
		case "wanproxy":
			os.Exit(wanproxyMain(os.Args[2:], os.Stderr))
		}
	}
	var cfg config
	var rssCapMiB int64
	flag.StringVar(&cfg.gatewayBin, "gateway", "bin/gateway", "gateway binary (go build -o bin/gateway ./cmd/gateway)")
	flag.StringVar(&cfg.orthancBin, "orthanc", "/usr/sbin/Orthanc", "Orthanc binary")
	flag.StringVar(&cfg.orthancPlugin, "orthanc-plugin", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "Orthanc DICOMweb plugin")
	flag.StringVar(&cfg.out, "out", "", "also write the tables to this markdown file")
	flag.StringVar(&cfg.parts, "parts", "abced", "parts to run, in this order (a b c d e)")
	flag.StringVar(&cfg.targets, "targets", "embedded,redis,orthanc", "targets: embedded, redis, orthanc")
	flag.BoolVar(&cfg.small, "small", false, "quick run (1–2 minutes): 100 small, 20 CT slices, 64 MiB big instance, ≤2,000 QIDO studies")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the work directory (logs, data) instead of removing it")
	flag.StringVar(&cfg.cleanup, "cleanup", "auto", "remove the redis+minio gateway's Redis keys and bucket at the end: yes, no, or auto (yes unless GATEWAY_TEST_TOOLS is set, i.e. the servers are scripts/testenv.sh's throw-away ones)")
	flag.IntVar(&cfg.conc, "concurrency", 4, "concurrent requests for STOW and loading")
	flag.IntVar(&cfg.batch, "batch", 1, "instances per STOW request in (a) and (b)")
	flag.IntVar(&cfg.rounds, "rounds", 3, "(a) and (b): rounds, each storing a fresh copy of the data on every target in turn (reversed order every other round); rows give the median round, a note the gateway ÷ orthanc ratio of each round")
	flag.IntVar(&cfg.loadBatch, "load-batch", 50, "studies per STOW request when loading (d)")
	flag.IntVar(&cfg.smallN, "small-instances", 1000, "(a) number of small instances (one series, also (e)'s metadata series)")
	flag.IntVar(&cfg.ctN, "ct-slices", 200, "(b) CT slices 512x512")
	flag.IntVar(&cfg.bigFrames, "big-frames", 2048, "(c) frames of 512x512x16-bit in the big instance (2048 = 1 GiB)")
	flag.IntVar(&cfg.qidoMax, "qido-studies", 100_000, "(d) most studies to load; fewer if the load rates measured would pass -qido-budget")
	flag.IntVar(&cfg.qidoProbe, "qido-probe", 500, "(d) studies loaded first to measure each target's load rate")
	flag.DurationVar(&cfg.qidoBudget, "qido-budget", 10*time.Minute, "(d) time to load all targets, in total")
	flag.IntVar(&cfg.queries, "queries", 200, "(d) queries of each kind")
	flag.DurationVar(&cfg.queryTime, "query-time", 30*time.Second, "(d) most time spent on one kind of query on one target (at least 10 queries run)")
	flag.IntVar(&cfg.retrieveReps, "retrieve-reps", 3, "(e) whole-study retrieves (median reported)")
	flag.IntVar(&cfg.metaReps, "meta-reps", 20, "(e) warm series metadata requests")
	flag.IntVar(&cfg.frames, "frames", 200, "(e) single-frame requests")
	flag.Int64Var(&rssCapMiB, "rss-cap", 6144, "(c) abort the big upload when the server's RSS passes this many MiB (0: no cap)")
	flag.Uint64Var(&cfg.seed, "seed", 1, "seed of the random query and frame choices")
	flag.Parse()
	if cfg.small {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		def := func(name string, p *int, v int) {
			if !set[name] {
				*p = v
			}
		}
		def("small-instances", &cfg.smallN, 100)
		def("ct-slices", &cfg.ctN, 20)
		def("big-frames", &cfg.bigFrames, 128)
		def("qido-studies", &cfg.qidoMax, 2000)
		def("qido-probe", &cfg.qidoProbe, 200)
		def("queries", &cfg.queries, 30)
		def("meta-reps", &cfg.metaReps, 5)
		def("frames", &cfg.frames, 30)
		if !set["qido-budget"] {
			cfg.qidoBudget = 40 * time.Second
		}
	}
	cfg.rssCap = rssCapMiB << 20
	switch cfg.cleanup {
	case "yes", "no", "auto":
	default:
		fmt.Fprintln(os.Stderr, "bench: -cleanup must be yes, no or auto")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { // after the first Ctrl-C, a second one kills at once (children get SIGTERM via Pdeathsig)
		<-ctx.Done()
		stop()
	}()
	b := &bench{cfg: cfg, client: newClient(cfg.conc)}
	err := b.run(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func (b *bench) emit(s string) {
	fmt.Print(s)
	b.report.WriteString(s)
	if b.cfg.out != "" {
		if err := os.WriteFile(b.cfg.out, []byte(b.report.String()), 0o644); err != nil {
			logf("write %s: %v", b.cfg.out, err)
		}
	}
}

func (b *bench) run(ctx context.Context) (err error) {
	if _, err := os.Stat(b.cfg.gatewayBin); err != nil {
		return fmt.Errorf("%w: build it first: go build -o bin/gateway ./cmd/gateway", err)
	}
	work, err := os.MkdirTemp("", "gateway-bench-")
	if err != nil {
		return err
	}
	if b.cfg.keep {
		logf("work directory (kept): %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	want := map[string]bool{}
	for _, t := range strings.Split(b.cfg.targets, ",") {
		want[strings.TrimSpace(t)] = true
	}
	defer func() {
		for _, t := range b.targets {
			t.stop()
		}
	}()

	runID := fmt.Sprintf("%d-%d", time.Now().Unix(), os.Getpid())
	var notes []string
	if want["embedded"] {
		logf("starting %s", targetEmbedded)
		b.targets = append(b.targets, startGateway(ctx, targetEmbedded, b.cfg.gatewayBin, work, nil))
	}
	if want["redis"] {
		be := &gatewayBackend{
			redisURL: os.Getenv("GATEWAY_TEST_REDIS_URL"), redisPrefix: "bench-" + runID + ":",
			s3Endpoint: os.Getenv("GATEWAY_TEST_S3_ENDPOINT"), s3Bucket: "bench-" + strings.ReplaceAll(runID, "_", "-"),
			s3Access: os.Getenv("GATEWAY_TEST_S3_ACCESS_KEY"), s3Key: os.Getenv("GATEWAY_TEST_S3_SECRET_KEY"),
		}
		if be.redisURL == "" || be.s3Endpoint == "" {
			b.targets = append(b.targets, &target{name: targetRedis,
				startErr: errors.New("GATEWAY_TEST_REDIS_URL / GATEWAY_TEST_S3_ENDPOINT unset: run through scripts/testenv.sh")})
		} else {
			logf("starting %s (prefix %s, bucket %s)", targetRedis, be.redisPrefix, be.s3Bucket)
			b.targets = append(b.targets, startGateway(ctx, targetRedis, b.cfg.gatewayBin, work, be))
			if b.cfg.cleanup == "yes" || (b.cfg.cleanup == "auto" && os.Getenv("GATEWAY_TEST_TOOLS") == "") {
				defer cleanupBackend(be)
			}
		}
	}
	if want["orthanc"] {
		logf("starting %s", targetOrthanc)
		b.targets = append(b.targets, startOrthanc(ctx, b.cfg.orthancBin, b.cfg.orthancPlugin, work))
	}
	for _, t := range b.targets {
		if t.startErr != nil {
			logf("%s did not start: %v", t.name, t.startErr)
		}
	}

	if want["redis"] {
		logf("warming MinIO (untimed)")
		if n := warmMinIO(ctx, smallInstances(max(b.cfg.smallN, 1000), 0)); n != "" {
			notes = append(notes, n)
		}
	}
	b.emit(b.header(notes))
	for _, p := range b.cfg.parts {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		start := loadavg()
		t0 := time.Now()
		var tab *table
		switch p {
		case 'a':
			tab = b.stowRounds(ctx, "a", func(round int) []synth.Instance { return smallInstances(b.cfg.smallN, round) }, b.setSmall, &table{
				title: fmt.Sprintf("(a) STOW-RS of %d small instances (160x160x16-bit, %.1f KB each), %d per request, %d concurrent",
					b.cfg.smallN, float64(smallInstances(1, 0)[0].Size())/1e3, b.cfg.batch, b.cfg.conc),
				cols: stowCols, notes: []string{stagesNote}})
			if n := b.minioPutNote(ctx, smallInstances(b.cfg.smallN, 0), tab); n != "" {
				tab.notes = append(tab.notes, n)
			}
		case 'b':
			tab = b.stowRounds(ctx, "b", func(round int) []synth.Instance { return ctInstances(b.cfg.ctN, round) }, b.setCT, &table{
				title: fmt.Sprintf("(b) STOW-RS of a %d-slice CT study (512x512x16-bit, %.0f KB each), %d per request, %d concurrent",
					b.cfg.ctN, float64(ctInstances(1, 0)[0].Size())/1e3, b.cfg.batch, b.cfg.conc),
				cols: stowCols, notes: []string{stagesNote}})
			if n := b.minioPutNote(ctx, ctInstances(b.cfg.ctN, 0), tab); n != "" {
				tab.notes = append(tab.notes, n)
			}
		case 'c':
			in := bigInstance(b.cfg.bigFrames)
			tab = b.perTarget(ctx, "c", b.partC, &table{
				title: fmt.Sprintf("(c) Peak RSS of the server while one %.2f GiB multi-frame instance (%d frames of 512x512x16-bit) streams in by STOW-RS",
					float64(in.Size())/(1<<30), b.cfg.bigFrames),
				cols: bigCols,
				notes: []string{"VmHWM is reset (`5` > /proc/PID/clear_refs) just before the upload; \"RSS before\" is VmRSS then. " +
					"The client generates the instance while sending it (constant memory; generating pseudo-random pixels on the same cores bounds MB/s). For gateway redis+minio the figure is the gateway process only (MinIO and Redis are separate processes)."}})
		case 'e':
			tab = b.perTarget(ctx, "e", b.partE, &table{
				title: fmt.Sprintf("(e) WADO-RS: retrieve of the %d-slice CT study, metadata of a %d-instance series, single frames", b.cfg.ctN, b.cfg.smallN),
				cols:  wadoCols,
				notes: []string{fmt.Sprintf("Study retrieve: `Accept: %s`, median of %d; MB/s counts every byte of the multipart body. "+
					"Series metadata: `Accept: %s`, one cold request then %d timed (p99 of %d is close to the maximum). "+
					"Frames: frames/1 of %d random CT instances, `Accept: %s`, one request at a time. Only the gzip column sends `Accept-Encoding: gzip` (its body is read compressed, not inflated); the others send no Accept-Encoding.",
					acceptDicom, b.cfg.retrieveReps, acceptJSON, b.cfg.metaReps, b.cfg.metaReps, b.cfg.frames, acceptFrames)}})
		case 'd':
			tabs := b.partD(ctx)
			for _, tt := range tabs[:len(tabs)-1] {
				tt.notes = append(tt.notes, fmt.Sprintf("Load average (1/5/15 min) at start: %s.", start))
				b.emit(tt.markdown())
			}
			tab = tabs[len(tabs)-1]
		default:
			return fmt.Errorf("-parts: unknown part %q", p)
		}
		tab.notes = append(tab.notes, fmt.Sprintf("Load average (1/5/15 min) at start: %s; at end: %s. Part took %s.",
			start, loadavg(), time.Since(t0).Round(time.Second)))
		b.emit(tab.markdown())
	}
	return ctx.Err()
}

// perTarget runs f on every target in turn and fills tab's rows.
func (b *bench) perTarget(ctx context.Context, part string, f func(context.Context, *target) metrics, tab *table) *table {
	for _, t := range b.targets {
		if ctx.Err() != nil {
			tab.rows = append(tab.rows, row{label: t.name, target: t.name, m: failed(ctx.Err())})
			continue
		}
		logf("(%s) %s …", part, t.name)
		m := f(ctx, t)
		if m.err != nil {
			logf("(%s) %s: %v", part, t.name, m.err)
		}
		tab.rows = append(tab.rows, row{label: t.name, target: t.name, m: m})
	}
	return tab
}

func (b *bench) header(notes []string) string {
	var s strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&s, "## Gateway vs Orthanc benchmark\n\n")
	fmt.Fprintf(&s, "- run: %s on %s, %d CPUs (shared with other work: figures are noisy), load average at start %s\n",
		time.Now().Format(time.RFC3339), host, runtime.NumCPU(), loadavg())
	fmt.Fprintf(&s, "- command: `go run ./cmd/bench %s`\n", strings.Join(os.Args[1:], " "))
	fmt.Fprintf(&s, "- client: Go HTTP (%s), concurrency %d for STOW and loading, one request at a time for latencies\n", runtime.Version(), b.cfg.conc)
	if out, err := exec.Command(b.cfg.orthancBin, "--version").Output(); err == nil {
		fmt.Fprintf(&s, "- orthanc: %s, DICOMweb plugin %s, default options except loopback HTTP only, no auth, no DICOM port, HTTP compression on (used only when a request sends Accept-Encoding; SyncStorageArea stays on, like the gateway's fsync)\n",
			strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]), b.orthancPluginVersion())
	}
	fmt.Fprintf(&s, "- gateway: %s, embedded = files + bolt in a temporary --data-dir; redis+minio = the GATEWAY_TEST_* servers\n", b.cfg.gatewayBin)
	for _, n := range notes {
		fmt.Fprintf(&s, "- %s\n", n)
	}
	s.WriteString("- ratios are gateway ÷ orthanc: above 1 is better for rates, below 1 is better for latencies and memory\n\n")
	return s.String()
}

func (b *bench) orthancPluginVersion() string {
	for _, t := range b.targets {
		if t.name != targetOrthanc || t.startErr != nil {
			continue
		}
		base := strings.TrimSuffix(t.root, "/dicom-web")
		_, body, _, err := get(context.Background(), b.client, base+"/plugins/dicom-web", "application/json", true)
		var p struct{ Version string }
		if err == nil && json.Unmarshal(body, &p) == nil && p.Version != "" {
			return p.Version
		}
	}
	return "?"
}

// cleanupBackend removes what the redis+minio gateway wrote: its Redis keys
// (by prefix) and its bucket, for runs against long-lived servers (with
// testenv.sh's throw-away servers it would only cost minutes).
func cleanupBackend(be *gatewayBackend) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var errs []error
	if opt, err := redis.ParseURL(be.redisURL); err != nil {
		errs = append(errs, err)
	} else {
		rc := redis.NewClient(opt)
		var cursor uint64
		for range 1_000_000 { // bounded: ends when SCAN returns cursor 0
			keys, next, err := rc.Scan(ctx, cursor, be.redisPrefix+"*", 1000).Result()
			if err != nil {
				errs = append(errs, err)
				break
			}
			if len(keys) > 0 {
				if err := rc.Unlink(ctx, keys...).Err(); err != nil {
					errs = append(errs, err)
					break
				}
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
		rc.Close()
	}
	mc, err := minio.New(be.s3Endpoint, &minio.Options{Creds: credentials.NewStaticV4(be.s3Access, be.s3Key, "")})
	if err != nil {
		errs = append(errs, err)
	} else if ok, err := mc.BucketExists(ctx, be.s3Bucket); err == nil && ok {
		objs := mc.ListObjects(ctx, be.s3Bucket, minio.ListObjectsOptions{Recursive: true})
		for e := range mc.RemoveObjects(ctx, be.s3Bucket, objs, minio.RemoveObjectsOptions{}) {
			errs = append(errs, e.Err)
		}
		if err := mc.RemoveBucket(ctx, be.s3Bucket); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		logf("cleanup of redis prefix %s / bucket %s: %v", be.redisPrefix, be.s3Bucket, err)
	}
}
