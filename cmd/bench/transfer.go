package main

// The transfer benchmark (bench transfer, make bench-transfer): the same
// studies forwarded gateway→gateway (POST /api/v1/transfers, until every
// transfer is completed, i.e. sent and verified) and Orthanc→Orthanc (its
// DICOMweb client, POST /dicom-web/servers/{name}/stow, until the receiver
// counts every instance), on loopback and through the WAN emulator of
// internal/wanproxy, for the embedded gateway and the gateway on Redis +
// MinIO; beside the raw rates of what forwarding depends on, measured in the
// same run: the link (a plain HTTP upload), the disk (write + fsync per
// file) and MinIO (PUT and GET with minio-go).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/cluster"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/internal/wanproxy"
)

type transferConfig struct {
	gatewayBin, orthancBin, orthancPlugin string
	out                                   string
	systems                               []string // embedded, redis, orthanc
	studies, instances, bigMiB            int
	link                                  wanproxy.Config
	peerMaxParallel                       int
	partConc                              []int
	caseTimeout                           time.Duration
	keep, small                           bool
	// rounds repeats every system's cases, each round with fresh senders
	// and receivers, the systems in reversed order every other round.
	rounds int
}

const (
	systemEmbedded = "embedded"
	systemRedis    = "redis"
	systemOrthanc  = "orthanc"
)

func transferMain(args []string, stdout, stderr io.Writer) int {
	var cfg transferConfig
	fs := flag.NewFlagSet("transfer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.gatewayBin, "gateway", "bin/gateway", "gateway binary (go build -o bin/gateway ./cmd/gateway)")
	fs.StringVar(&cfg.orthancBin, "orthanc", "/usr/sbin/Orthanc", "Orthanc binary")
	fs.StringVar(&cfg.orthancPlugin, "orthanc-plugin", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "Orthanc DICOMweb plugin")
	fs.StringVar(&cfg.out, "out", "", "also write the report to this markdown file")
	systems := fs.String("systems", "embedded,redis,orthanc", "what forwards: embedded (gateway, files + bolt), redis (gateway on Redis + MinIO), orthanc")
	fs.IntVar(&cfg.studies, "studies", 4, "CT studies")
	fs.IntVar(&cfg.instances, "instances", 409, "CT slices (512x512x16-bit, 525 KB each) over all CT studies")
	fs.IntVar(&cfg.bigMiB, "big-mib", 256, "MiB of pixel data of one more study holding one multi-frame instance, for memory (1024 for the 1 GiB check; 0: none)")
	fs.DurationVar(&cfg.link.RTT, "rtt", 20*time.Millisecond, "round-trip time of the emulated WAN link")
	fs.Float64Var(&cfg.link.Mbit, "mbit", 1000, "bandwidth of each direction of the emulated WAN link, Mbit/s")
	fs.IntVar(&cfg.peerMaxParallel, "peer-max-parallel", 0, "max_parallel of the sending gateway's peer (0: not set, the gateway's default applies)")
	partConc := fs.String("part-conc", "1,4,8", "concurrencies of the raw disk and MinIO measurements (8: the GETs a gateway reading from S3 keeps ahead)")
	fs.DurationVar(&cfg.caseTimeout, "case-timeout", 10*time.Minute, "longest one forwarding case may take")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the work directory (logs) instead of removing it")
	fs.IntVar(&cfg.rounds, "rounds", 1, "run every system's cases this many times, each round with fresh senders and receivers and the systems in reversed order every other round; a note gives the gateway ÷ orthanc ratio and share of the link round by round")
	fs.BoolVar(&cfg.small, "small", false, "smoke run (1–2 minutes): 2 studies, 40 CT slices, a 32 MiB instance")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cfg.small {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, p := range map[string]*int{"studies": &cfg.studies, "instances": &cfg.instances, "big-mib": &cfg.bigMiB} {
			if !set[name] {
				*p = map[string]int{"studies": 2, "instances": 40, "big-mib": 32}[name]
			}
		}
	}
	for _, s := range strings.Split(*systems, ",") {
		switch s = strings.TrimSpace(s); s {
		case systemEmbedded, systemRedis, systemOrthanc:
			cfg.systems = append(cfg.systems, s)
		default:
			fmt.Fprintf(stderr, "bench transfer: -systems: unknown %q (embedded, redis, orthanc)\n", s)
			return 2
		}
	}
	for _, s := range strings.Split(*partConc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(stderr, "bench transfer: -part-conc: %q is not a positive number\n", s)
			return 2
		}
		cfg.partConc = append(cfg.partConc, n)
	}
	if cfg.studies < 1 || cfg.instances < cfg.studies || cfg.bigMiB < 0 || cfg.peerMaxParallel < 0 || cfg.rounds < 1 {
		fmt.Fprintln(stderr, "bench transfer: need -studies >= 1, -instances >= -studies, -big-mib >= 0, -peer-max-parallel >= 0, -rounds >= 1")
		return 2
	}
	if err := cfg.link.Validate(); err != nil {
		fmt.Fprintln(stderr, "bench transfer:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tb := &transferBench{cfg: cfg, stdout: stdout, client: newClient(4), runID: fmt.Sprintf("%d-%d", time.Now().Unix(), os.Getpid())}
	if err := tb.run(ctx); err != nil {
		fmt.Fprintln(stderr, "bench transfer:", err)
		return 1
	}
	return 0
}

type transferBench struct {
	cfg    transferConfig
	stdout io.Writer
	client *http.Client
	runID  string
	work   string
	// round is the round running (from 0): its cases, retrieves and
	// backend names carry it.
	round int
	data  []synth.Instance
	// studyUIDs in data, in order.
	studyUIDs []string
	bytes     int64
	// batches are forwarded one after the other in each case and timed
	// apart: the CT studies (the rates to compare), then the study of the
	// big instance (memory; Orthanc handles big instances differently).
	batches []batch
	sink    *sink
	report  strings.Builder
	// retrieves are the whole-study retrieves from each loopback receiver.
	retrieves []retrieveResult
}

// batch is a set of studies forwarded and timed together.
type batch struct {
	label     string
	studies   []string // Study Instance UIDs
	instances int
	bytes     int64
}

// transferData is the data set: cfg.instances CT slices spread over
// cfg.studies studies, then one study of one multi-frame instance of
// bigMiB MiB of pixel data. UIDs use first component 4 (CT) and 5 (big),
// apart from bench's other data sets.
func transferData(studies, instances, bigMiB int) []synth.Instance {
	var out []synth.Instance
	for s := range studies {
		n := instances / studies
		if s < instances%studies {
			n++
		}
		for i := range n {
			study := uint64(s + 1)
			out = append(out, synth.Instance{
				PatientName: "Benchmark^Transfer", PatientID: fmt.Sprintf("BENCH-XFER-%d", s+1), PatientBirthDate: "19700101", PatientSex: "O",
				StudyInstanceUID: synth.UID(4, study), SeriesInstanceUID: synth.UID(4, study, 1), SOPInstanceUID: synth.UID(4, study, 1, uint64(i+1)),
				SOPClassUID: synth.CTImageStorage, Modality: "CT",
				StudyDate: "19990101", StudyTime: "120000", AccessionNumber: fmt.Sprintf("BENCHXFER%d", s+1), StudyID: "4",
				StudyDescription: "bench transfer CT", SeriesDescription: "axial",
				SeriesNumber: 1, InstanceNumber: i + 1, Rows: 512, Columns: 512, PixelSeed: 4_000_000 + study*10_000 + uint64(i),
			})
		}
	}
	if bigMiB > 0 {
		big := bigInstance(bigMiB * 2) // a 512x512x16-bit frame is 0.5 MiB
		big.StudyInstanceUID, big.SeriesInstanceUID, big.SOPInstanceUID = synth.UID(5, 1), synth.UID(5, 1, 1), synth.UID(5, 1, 1, 1)
		big.PatientID, big.AccessionNumber = "BENCH-XFER-BIG", "BENCHXFERBIG"
		out = append(out, big)
	}
	return out
}

func (tb *transferBench) emit(s string) {
	fmt.Fprint(tb.stdout, s)
	tb.report.WriteString(s)
	if tb.cfg.out != "" {
		if err := os.WriteFile(tb.cfg.out, []byte(tb.report.String()), 0o644); err != nil {
			logf("write %s: %v", tb.cfg.out, err)
		}
	}
}

// forwardCase is one row of the forwarding table.
type forwardCase struct {
	system, backend string
	round           int
	wan             bool
	batch           *batch
	d               time.Duration
	// link is a plain HTTP upload of the batch's bytes over the same kind
	// of link just before the case, so that both see the same machine load.
	link        time.Duration
	linkErr     error
	senderHWM   int64 // bytes; 0 when not read
	receiverHWM int64
	// senderCPU and receiverCPU are the CPU time (user + system) the two
	// processes used during the case; 0 when not read. For redis+minio
	// they leave out Redis and MinIO, shared by every gateway.
	senderCPU, receiverCPU time.Duration
	// receiverStages is a gateway receiver's mean time per store stage
	// over the case (describeStages), "" when not read.
	receiverStages string
	err            error
}

func (tb *transferBench) run(ctx context.Context) error {
	if _, err := os.Stat(tb.cfg.gatewayBin); err != nil {
		return fmt.Errorf("%w: build it first: go build -o bin/gateway ./cmd/gateway", err)
	}
	work, err := os.MkdirTemp("", "gateway-bench-transfer-")
	if err != nil {
		return err
	}
	tb.work = work
	if tb.cfg.keep {
		logf("work directory (kept): %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	tb.data = transferData(tb.cfg.studies, tb.cfg.instances, tb.cfg.bigMiB)
	seen := map[string]bool{}
	ct := batch{label: fmt.Sprintf("%d CT studies", tb.cfg.studies)}
	big := batch{label: fmt.Sprintf("1 study of one %d MiB instance", tb.cfg.bigMiB)}
	for _, in := range tb.data {
		tb.bytes += in.Size()
		b := &ct
		if in.Frames > 1 {
			b = &big
		}
		b.instances++
		b.bytes += in.Size()
		if !seen[in.StudyInstanceUID] {
			seen[in.StudyInstanceUID] = true
			tb.studyUIDs = append(tb.studyUIDs, in.StudyInstanceUID)
			b.studies = append(b.studies, in.StudyInstanceUID)
		}
	}
	tb.batches = append(tb.batches, ct)
	if big.instances > 0 {
		tb.batches = append(tb.batches, big)
	}
	if tb.sink, err = startSink(tb.cfg.link); err != nil {
		return err
	}
	defer tb.sink.close()
	start := loadavg()
	t0 := time.Now()
	tb.emit(tb.header())

	parts := tb.measureParts(ctx)
	var cases []forwardCase
	for round := range tb.cfg.rounds {
		tb.round = round
		tb.work = filepath.Join(work, fmt.Sprintf("round%d", round+1))
		if err := os.MkdirAll(tb.work, 0o700); err != nil {
			return err
		}
		systems := slices.Clone(tb.cfg.systems)
		if round%2 == 1 {
			slices.Reverse(systems)
		}
		for _, s := range systems {
			if ctx.Err() != nil {
				break
			}
			switch s {
			case systemEmbedded:
				cases = append(cases, tb.gatewayCases(ctx, "embedded (files + bolt)", nil)...)
			case systemRedis:
				cases = append(cases, tb.redisCases(ctx)...)
			case systemOrthanc:
				cases = append(cases, tb.orthancCases(ctx)...)
			}
		}
		if !tb.cfg.keep {
			_ = os.RemoveAll(tb.work) // the senders' copies of the data
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	tb.emit(tb.forwardTable(cases, parts))
	tb.emit(tb.receiverStagesTable(cases))
	tb.emit(retrieveTable(tb.retrieves, parts))
	tb.emit(partsTable(parts))
	tb.emit(fmt.Sprintf("Load average (1/5/15 min) at start: %s; at end: %s. The run took %s.\n\n", start, loadavg(), time.Since(t0).Round(time.Second)))
	return nil
}

func (tb *transferBench) header() string {
	var s strings.Builder
	host, _ := os.Hostname()
	ct := tb.cfg.instances
	fmt.Fprintf(&s, "## Transfer benchmark: gateway→gateway and Orthanc→Orthanc\n\n")
	fmt.Fprintf(&s, "- run: %s on %s, %d CPUs (shared with other work: figures are noisy), load average at start %s\n",
		time.Now().Format(time.RFC3339), host, runtime.NumCPU(), loadavg())
	fmt.Fprintf(&s, "- command: `go run ./cmd/bench transfer %s`\n", strings.Join(os.Args[2:], " "))
	fmt.Fprintf(&s, "- data: %d studies, %d instances, %.1f MB: %d CT slices 512x512x16-bit (%.0f KB each) in %d studies",
		len(tb.studyUIDs), len(tb.data), float64(tb.bytes)/mb, ct, float64(tb.data[0].Size())/1e3, tb.cfg.studies)
	if tb.cfg.bigMiB > 0 {
		fmt.Fprintf(&s, ", and one study of one %d MiB multi-frame instance", tb.cfg.bigMiB)
	}
	s.WriteString("; stored at the sender first (not timed)\n")
	fmt.Fprintf(&s, "- WAN: internal/wanproxy between sender and receiver, RTT %s, %g Mbit/s per direction (%.1f MB/s), buffer %.1f MiB per connection and direction\n",
		tb.cfg.link.RTT, tb.cfg.link.Mbit, tb.cfg.link.Mbit/8, float64(wanBuffer(tb.cfg.link))/(1<<20))
	mp := "unset (the gateway's default)"
	if tb.cfg.peerMaxParallel > 0 {
		mp = strconv.Itoa(tb.cfg.peerMaxParallel)
	}
	fmt.Fprintf(&s, "- gateway: %s, peer `gateway: true` (SHA-256 verification), max_parallel %s, every other setting default, --log-level warn; a fresh receiver per case\n", tb.cfg.gatewayBin, mp)
	if out, err := runOutput(tb.cfg.orthancBin, "--version"); err == nil {
		fmt.Fprintf(&s, "- orthanc: %s with the DICOMweb plugin, its STOW-RS client (`POST /dicom-web/servers/{name}/stow`, synchronous) with default settings, SyncStorageArea on; a fresh receiver per case\n",
			strings.TrimSpace(strings.SplitN(out, "\n", 2)[0]))
	}
	s.WriteString("\n")
	return s.String()
}

func wanBuffer(c wanproxy.Config) int {
	if c.Buffer > 0 {
		return c.Buffer
	}
	if c.Mbit <= 0 {
		return 4 << 20
	}
	return int(c.Mbit*1e6/8*c.RTT.Seconds()) + 1<<20
}

// newCases are the cases of one system: each batch on loopback, then each
// through the WAN; one receiver per link gets the batches in turn.
func (tb *transferBench) newCases(system, backend string) []forwardCase {
	var cases []forwardCase
	for _, wan := range []bool{false, true} {
		for i := range tb.batches {
			cases = append(cases, forwardCase{system: system, backend: backend, round: tb.round, wan: wan, batch: &tb.batches[i]})
		}
	}
	return cases
}

func (tb *transferBench) linkName(wan bool) string {
	if wan {
		return fmt.Sprintf("WAN %s, %g Mbit/s", tb.cfg.link.RTT, tb.cfg.link.Mbit)
	}
	return "loopback"
}

// ---- gateway → gateway ----

func (tb *transferBench) redisCases(ctx context.Context) []forwardCase {
	url, ep := os.Getenv("GATEWAY_TEST_REDIS_URL"), os.Getenv("GATEWAY_TEST_S3_ENDPOINT")
	if url == "" || ep == "" {
		err := errors.New("GATEWAY_TEST_REDIS_URL / GATEWAY_TEST_S3_ENDPOINT unset: run through scripts/testenv.sh (make bench-transfer does)")
		cases := tb.newCases("gateway", "redis+minio")
		for i := range cases {
			cases[i].err = err
		}
		return cases
	}
	backend := func(role string) *gatewayBackend {
		name := fmt.Sprintf("bt-%s-r%d-%s", tb.runID, tb.round+1, role)
		return &gatewayBackend{redisURL: url, redisPrefix: name + ":", s3Endpoint: ep, s3Bucket: name,
			s3Access: os.Getenv("GATEWAY_TEST_S3_ACCESS_KEY"), s3Key: os.Getenv("GATEWAY_TEST_S3_SECRET_KEY")}
	}
	return tb.gatewayCases(ctx, "redis+minio", backend)
}

func backendArgs(be *gatewayBackend) []string {
	if be == nil {
		return nil
	}
	return []string{"--redis-url", be.redisURL, "--redis-prefix", be.redisPrefix, "--s3-endpoint", be.s3Endpoint,
		"--s3-bucket", be.s3Bucket, "--s3-access-key", be.s3Access, "--s3-secret-key", be.s3Key}
}

// gatewayCases stores the data at a sender gateway, then forwards it to a
// fresh receiver directly and to another through the WAN proxy. backend
// gives each gateway its Redis prefix and bucket (nil: embedded).
func (tb *transferBench) gatewayCases(ctx context.Context, label string, backend func(role string) *gatewayBackend) []forwardCase {
	cases := tb.newCases("gateway", label)
	fail := func(err error) []forwardCase { return failUnmeasured(cases, err) }
	slug := "gateway-" + strings.NewReplacer(" ", "", "(", "", ")", "", "+", "-").Replace(label)
	dir := filepath.Join(tb.work, slug)
	be := func(role string) *gatewayBackend {
		if backend == nil {
			return nil
		}
		return backend(role)
	}
	portDirect, portWAN, proxy, err := tb.receiverLinks()
	if err != nil {
		return fail(err)
	}
	defer proxy.Close()
	peer := func(name, addr string) string {
		s := fmt.Sprintf("  - name: %s\n    url: http://%s/dicomweb\n    gateway: true\n", name, addr)
		if tb.cfg.peerMaxParallel > 0 {
			s += fmt.Sprintf("    max_parallel: %d\n", tb.cfg.peerMaxParallel)
		}
		return s
	}
	config := "peers:\n" + peer("direct", fmt.Sprintf("127.0.0.1:%d", portDirect)) + peer("wan", proxy.Addr())

	logf("transfer: %s: starting the sender, storing %.0f MB (not timed)", label, float64(tb.bytes)/mb)
	senderBE := be("sender")
	if senderBE != nil {
		defer cleanupBackend(senderBE)
	}
	sender, err := cluster.StartGateway(ctx, cluster.GatewayConfig{Bin: tb.cfg.gatewayBin, Name: "hampshire", Dir: filepath.Join(dir, "sender"),
		Config: config, Args: append(backendArgs(senderBE), "--log-level", "warn")})
	if err != nil {
		return fail(fmt.Errorf("sender: %w", err))
	}
	defer func() { _ = sender.Stop() }()
	if _, err := stowAll(ctx, tb.client, sender.URL()+"/dicomweb", tb.data, 8, 4); err != nil {
		return fail(fmt.Errorf("storing the data at the sender: %w", err))
	}

	for _, wan := range []bool{false, true} {
		port, peerName := portDirect, "direct"
		if wan {
			port, peerName = portWAN, "wan"
		}
		recvBE := be("recv-" + peerName)
		recvDir := filepath.Join(dir, "receiver-"+peerName)
		receiver, err := cluster.StartGateway(ctx, cluster.GatewayConfig{Bin: tb.cfg.gatewayBin, Name: "surrey", Dir: recvDir, Port: port,
			Args: append(backendArgs(recvBE), "--log-level", "warn")})
		for i := range cases {
			c := &cases[i]
			if c.wan != wan {
				continue
			}
			if err != nil {
				c.err = fmt.Errorf("receiver: %w", err)
				continue
			}
			logf("transfer: gateway %s → %s, %s …", label, tb.linkName(wan), c.batch.label)
			if p := receiver.Proc(); p != nil {
				_ = resetHWM(p.Pid())
			}
			c.link, c.linkErr = tb.sink.upload(ctx, wan, c.batch.bytes)
			stagesBefore, _ := scrapeStages(ctx, tb.client, receiver.URL()+"/dicomweb")
			sent, received := cpuNow(procPid(sender.Proc())), cpuNow(procPid(receiver.Proc()))
			c.d, c.err = tb.forwardGateway(ctx, sender, peerName, c.batch)
			c.senderCPU, c.receiverCPU = sent.since(), received.since()
			if stagesAfter, err := scrapeStages(ctx, tb.client, receiver.URL()+"/dicomweb"); err == nil && stagesBefore != nil {
				c.receiverStages = describeStages(stagesBefore, stagesAfter)
			}
			c.senderHWM = hwm(sender.Proc())
			c.receiverHWM = hwm(receiver.Proc())
			if c.err != nil {
				c.err = fmt.Errorf("%w; sender log: %s; receiver log: %s", c.err, sender.LogTail(600), receiver.LogTail(600))
			} else {
				logf("transfer: … %.1f MB/s", float64(c.batch.bytes)/mb/c.d.Seconds())
			}
		}
		if err == nil && !wan && len(tb.batches) > 0 {
			ct := tb.batches[0]
			r := retrieveResult{system: "gateway", backend: label, round: tb.round, studies: len(ct.studies)}
			logf("transfer: gateway %s: whole-study retrieve of %d studies …", label, len(ct.studies))
			r.bytes, r.d, r.err = tb.retrieveStudies(ctx, receiver.URL()+"/dicomweb", ct.studies)
			tb.retrieves = append(tb.retrieves, r)
		}
		if err == nil {
			_ = receiver.Stop()
		}
		if recvBE != nil {
			cleanupBackend(recvBE)
		}
		if !tb.cfg.keep {
			_ = os.RemoveAll(recvDir)
		}
	}
	return cases
}

// cpuMark is the CPU time a process had used at one moment (ok: read).
type cpuMark struct {
	pid int
	at  time.Duration
	ok  bool
}

// cpuNow marks process pid's CPU time (pid 0: not read).
func cpuNow(pid int) cpuMark {
	if pid == 0 {
		return cpuMark{}
	}
	t, err := cluster.ProcCPU(pid)
	return cpuMark{pid: pid, at: t, ok: err == nil}
}

// since returns the CPU time the process used after m; 0 when not read.
func (m cpuMark) since() time.Duration {
	if !m.ok {
		return 0
	}
	t, err := cluster.ProcCPU(m.pid)
	if err != nil {
		return 0
	}
	return t - m.at
}

func procPid(p *cluster.Proc) int {
	if p == nil {
		return 0
	}
	return p.Pid()
}

// hwm is the process's peak RSS (0 when it cannot be read).
func hwm(p *cluster.Proc) int64 { return pidHWM(procPid(p)) }

// forwardGateway asks sender for one transfer per study to peer and waits
// until every one is completed (sent and verified by the sender). The
// sender's peak RSS is reset first, so that it covers this case only.
func (tb *transferBench) forwardGateway(parent context.Context, sender *cluster.Gateway, peer string, b *batch) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(parent, tb.cfg.caseTimeout)
	defer cancel()
	if p := sender.Proc(); p != nil {
		_ = resetHWM(p.Pid())
	}
	start := time.Now()
	var ids []string
	for _, study := range b.studies {
		t, err := cluster.CreateTransfer(ctx, sender.Client(), study, peer)
		if err != nil {
			return 0, fmt.Errorf("create transfer: %w", err)
		}
		ids = append(ids, t.ID)
	}
	instances := 0
	for len(ids) > 0 {
		// One list request a tick, without per-instance progress: asking
		// for each transfer (GET /transfers/{id}, which carries every
		// instance's state) 20 times a second took CPU from the sender
		// being measured (Orthanc's poll is one /statistics).
		list, err := sender.Client().ListTransfers(ctx, client.TransferQuery{Destination: peer, Limit: 1000})
		if err != nil {
			return 0, err
		}
		byID := make(map[string]*gateway.Transfer, len(list))
		for _, t := range list {
			byID[t.ID] = t
		}
		var pending []string
		for _, id := range ids {
			t, ok := byID[id]
			if !ok {
				return 0, fmt.Errorf("transfer %s is not in the sender's list of transfers to %s", id, peer)
			}
			switch {
			case t.State == gateway.StateCompleted:
				instances += t.InstancesTotal
			case t.State.Terminal():
				return 0, fmt.Errorf("transfer %s of study %s ended %s: %s", id, t.StudyUID, t.State, t.LastError)
			default:
				pending = append(pending, id)
			}
		}
		if ids = pending; len(ids) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("transfers not completed: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	d := time.Since(start)
	if instances != b.instances {
		return 0, fmt.Errorf("the completed transfers counted %d instances, want %d", instances, b.instances)
	}
	return d, nil
}

// failUnmeasured gives err to every case not measured yet and returns cases.
func failUnmeasured(cases []forwardCase, err error) []forwardCase {
	for i := range cases {
		if cases[i].err == nil && cases[i].d == 0 {
			cases[i].err = err
		}
	}
	return cases
}

// receiverLinks reserves the ports of a system's two receivers, the direct
// one and the one behind the WAN emulator, and starts the emulator in front
// of the second: the sender's configuration names both before they start.
func (tb *transferBench) receiverLinks() (portDirect, portWAN int, proxy *wanproxy.Proxy, err error) {
	portDirect, err1 := cluster.FreePort()
	portWAN, err2 := cluster.FreePort()
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, nil, err
	}
	proxy, err = wanproxy.Listen("127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", portWAN), tb.cfg.link)
	return portDirect, portWAN, proxy, err
}

// ---- Orthanc → Orthanc ----

func (tb *transferBench) orthancCases(ctx context.Context) []forwardCase {
	cases := tb.newCases("orthanc", "its own (files + SQLite)")
	fail := func(err error) []forwardCase { return failUnmeasured(cases, err) }
	dir := filepath.Join(tb.work, "orthanc")
	portDirect, portWAN, proxy, err := tb.receiverLinks()
	if err != nil {
		return fail(err)
	}
	defer proxy.Close()
	servers := map[string]string{
		"direct": fmt.Sprintf("http://127.0.0.1:%d/dicom-web/", portDirect),
		"wan":    "http://" + proxy.Addr() + "/dicom-web/",
	}
	logf("transfer: orthanc: starting the sender, storing %.0f MB (not timed)", float64(tb.bytes)/mb)
	sender := startOrthancOn(ctx, tb.cfg.orthancBin, tb.cfg.orthancPlugin, filepath.Join(dir, "sender"), 0, servers)
	defer sender.stop()
	if sender.startErr != nil {
		return fail(fmt.Errorf("sender: %w", sender.startErr))
	}
	if _, err := stowAll(ctx, tb.client, sender.root, tb.data, 8, 4); err != nil {
		return fail(fmt.Errorf("storing the data at the sender: %w", err))
	}
	// Orthanc's client takes Orthanc's own study identifiers.
	senderBase := strings.TrimSuffix(sender.root, "/dicom-web")
	var studies []struct {
		ID            string
		MainDicomTags struct{ StudyInstanceUID string }
	}
	if err := (&client.Client{HTTP: tb.client}).GetJSON(ctx, senderBase+"/studies?expand", &studies); err != nil {
		return fail(err)
	}
	orthancID := map[string]string{}
	for _, st := range studies {
		orthancID[st.MainDicomTags.StudyInstanceUID] = st.ID
	}
	for _, uid := range tb.studyUIDs {
		if orthancID[uid] == "" {
			return fail(fmt.Errorf("the sender does not list study %s", uid))
		}
	}
	for _, wan := range []bool{false, true} {
		port, name := portDirect, "direct"
		if wan {
			port, name = portWAN, "wan"
		}
		recvDir := filepath.Join(dir, "receiver-"+name)
		receiver := startOrthancOn(ctx, tb.cfg.orthancBin, tb.cfg.orthancPlugin, recvDir, port, nil)
		held := 0 // instances the receiver holds before each batch
		for i := range cases {
			c := &cases[i]
			if c.wan != wan {
				continue
			}
			if receiver.startErr != nil {
				c.err = fmt.Errorf("receiver: %w", receiver.startErr)
				continue
			}
			logf("transfer: orthanc → %s, %s …", tb.linkName(wan), c.batch.label)
			var ids []string
			for _, uid := range c.batch.studies {
				ids = append(ids, orthancID[uid])
			}
			_ = resetHWM(receiver.pid())
			c.link, c.linkErr = tb.sink.upload(ctx, wan, c.batch.bytes)
			sent, received := cpuNow(sender.pid()), cpuNow(receiver.pid())
			c.d, c.err = tb.forwardOrthanc(ctx, sender, receiver, name, ids, held+c.batch.instances)
			c.senderCPU, c.receiverCPU = sent.since(), received.since()
			c.senderHWM, c.receiverHWM = targetHWM(sender), targetHWM(receiver)
			if c.err == nil {
				logf("transfer: … %.1f MB/s", float64(c.batch.bytes)/mb/c.d.Seconds())
			}
			held += c.batch.instances
		}
		if receiver.startErr == nil && !wan && len(tb.batches) > 0 {
			ct := tb.batches[0]
			r := retrieveResult{system: "orthanc", backend: "its own (files + SQLite)", round: tb.round, studies: len(ct.studies)}
			logf("transfer: orthanc: whole-study retrieve of %d studies …", len(ct.studies))
			r.bytes, r.d, r.err = tb.retrieveStudies(ctx, receiver.root, ct.studies)
			tb.retrieves = append(tb.retrieves, r)
		}
		receiver.stop()
		if !tb.cfg.keep {
			_ = os.RemoveAll(recvDir)
		}
	}
	return cases
}

func targetHWM(t *target) int64 { return pidHWM(t.pid()) }

// pidHWM is process pid's peak RSS (0 for pid 0 or when it cannot be read).
func pidHWM(pid int) int64 {
	if pid == 0 {
		return 0
	}
	_, h, err := procStatus(pid)
	if err != nil {
		return 0
	}
	return h
}

// forwardOrthanc has the sender's DICOMweb client send the studies (ids:
// Orthanc's own identifiers) to server, then waits until the receiver
// counts want instances.
func (tb *transferBench) forwardOrthanc(parent context.Context, sender, receiver *target, server string, ids []string, want int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(parent, tb.cfg.caseTimeout)
	defer cancel()
	_ = resetHWM(sender.pid())
	senderBase := strings.TrimSuffix(sender.root, "/dicom-web")
	receiverBase := strings.TrimSuffix(receiver.root, "/dicom-web")
	body, err := json.Marshal(map[string]any{"Resources": ids, "Synchronous": true})
	if err != nil {
		return 0, err
	}
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, senderBase+"/dicom-web/servers/"+server+"/stow", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := tb.client.Do(req)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		err := readErr(resp)
		resp.Body.Close()
		return 0, fmt.Errorf("%w; sender log: %s", err, sender.logTail())
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for {
		var st struct{ CountInstances int }
		if err := (&client.Client{HTTP: tb.client}).GetJSON(ctx, receiverBase+"/statistics", &st); err != nil {
			return 0, err
		}
		if st.CountInstances >= want {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("the receiver has %d of %d instances: %w", st.CountInstances, want, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ---- report ----

func (tb *transferBench) forwardTable(cases []forwardCase, parts []partRate) string {
	var s strings.Builder
	fmt.Fprintf(&s, "### Forwarding, sender → receiver, until the receiver has everything\n\n")
	s.WriteString("| system | backend | link | data | instances | MB | seconds | MB/s | instances/s | share of the link | plain HTTP upload MB/s | ÷ plain HTTP upload | gateway/orthanc (MB/s) | ÷ MinIO PUT, 4 at once | ÷ MinIO GET → PUT, 4 at once | sender peak RSS MiB | receiver peak RSS MiB | sender CPU s per GB | receiver CPU s per GB |\n")
	s.WriteString("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	// The gateway's default max_parallel: 4 requests in flight, each
	// storing one instance at a time into MinIO at the receiver.
	minioPutRate, minioCopyRate := minioRate(parts, minioPut, 4), minioRate(parts, minioCopy, 4)
	orthanc := map[caseKey]float64{}
	for _, c := range cases {
		if c.system == "orthanc" && c.err == nil {
			orthanc[c.key()] = float64(c.batch.bytes) / mb / c.d.Seconds()
		}
	}
	mib := func(b int64) string {
		if b == 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f", float64(b)/(1<<20))
	}
	perGB := func(c forwardCase, d time.Duration) string {
		if d == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f", d.Seconds()/(float64(c.batch.bytes)/1e9))
	}
	for _, c := range cases {
		cells := []string{tb.systemCell(c.system, c.round), c.backend, tb.linkName(c.wan), c.batch.label, fmt.Sprint(c.batch.instances), fmt.Sprintf("%.1f", float64(c.batch.bytes)/mb)}
		if c.err != nil {
			cells = append(cells, "not measurable: "+cellEscape(c.err.Error()), "", "", "", "", "", "", "", "", "", "", "", "")
			s.WriteString("| " + strings.Join(cells, " | ") + " |\n")
			continue
		}
		rate := float64(c.batch.bytes) / mb / c.d.Seconds()
		share := "—"
		if c.wan && tb.cfg.link.Mbit > 0 {
			share = fmt.Sprintf("%.0f %%", 100*rate/(tb.cfg.link.Mbit/8))
		}
		httpRate, vsHTTP := "—", "—"
		if c.linkErr != nil {
			httpRate = "failed: " + cellEscape(c.linkErr.Error())
		} else if c.link > 0 {
			h := float64(c.batch.bytes) / mb / c.link.Seconds()
			httpRate, vsHTTP = fmt.Sprintf("%.1f", h), fmt.Sprintf("%.2f", rate/h)
		}
		ratio := "—"
		if c.system == "orthanc" {
			ratio = "1"
		} else if o := orthanc[c.key()]; o > 0 {
			ratio = fmt.Sprintf("%.2f", rate/o)
		}
		vsPut, vsCopy := "—", "—"
		if strings.Contains(c.backend, "minio") && !c.wan {
			if minioPutRate > 0 {
				vsPut = fmt.Sprintf("%.2f", rate/minioPutRate)
			}
			if minioCopyRate > 0 {
				vsCopy = fmt.Sprintf("%.2f", rate/minioCopyRate)
			}
		}
		cells = append(cells, fmt.Sprintf("%.1f", c.d.Seconds()), fmt.Sprintf("%.1f", rate), fmt.Sprintf("%.1f", float64(c.batch.instances)/c.d.Seconds()),
			share, httpRate, vsHTTP, ratio, vsPut, vsCopy, mib(c.senderHWM), mib(c.receiverHWM), perGB(c, c.senderCPU), perGB(c, c.receiverCPU))
		s.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	s.WriteString("\nOne receiver per system and link gets the batches in turn, each timed on its own. " +
		"Gateway: time from the first `POST /api/v1/transfers` (one per study) to the last transfer `completed`, " +
		"which includes the sender's verification (QIDO-RS listing and SHA-256 of every instance at the receiver). " +
		"Orthanc: time from `POST /dicom-web/servers/{name}/stow` with the batch's studies until the receiver's `/statistics` counts every instance. " +
		"Share of the link: MB/s ÷ the WAN's MB/s. Plain HTTP upload: one POST of the batch's byte count from a Go client to a Go server that discards it, " +
		"over the same kind of link (loopback, or a WAN proxy with the same settings), just before the case, so that both see the same load of the machine. " +
		"÷ MinIO (redis+minio on loopback): the same run's minio-go rates for the same object sizes, 4 at once (the sender's default max_parallel): PUT alone, " +
		"and GET → PUT, each object read and written back, which is the MinIO work of this case (both gateways use the one MinIO). Peak RSS: VmHWM of the process, reset before each batch; " +
		"for redis+minio the gateway process only (Redis and MinIO are separate processes, shared by all gateways, each gateway with its own key prefix and bucket). " +
		"CPU s per GB: the user + system CPU time of the sending and of the receiving process during the case (/proc/<pid>/stat), per GB (10⁹ bytes) forwarded; " +
		"less sensitive than MB/s to what else the machine is doing, and for redis+minio again the gateway process only.\n\n")
	if tb.cfg.rounds > 1 {
		s.WriteString(tb.roundsNote(cases, orthanc))
	}
	return s.String()
}

// caseKey is what a gateway case is compared with Orthanc's on: the same
// round, link and data.
type caseKey struct {
	round int
	wan   bool
	batch *batch
}

func (c *forwardCase) key() caseKey { return caseKey{c.round, c.wan, c.batch} }

// systemCell names a system (or a backend) in a table, with its round
// when there are several.
func (tb *transferBench) systemCell(system string, round int) string {
	if tb.cfg.rounds > 1 {
		return fmt.Sprintf("%s, round %d", system, round+1)
	}
	return system
}

// roundsNote gives, for each gateway backend, link and data, its MB/s ÷
// Orthanc's of the same round and its share of the emulated link, round by
// round, with the median of each.
func (tb *transferBench) roundsNote(cases []forwardCase, orthanc map[caseKey]float64) string {
	type series struct {
		label          string
		ratios, shares []float64
	}
	var order []string
	all := map[string]*series{}
	for _, c := range cases {
		if c.system != "gateway" || c.err != nil {
			continue
		}
		label := fmt.Sprintf("%s, %s, %s", c.backend, tb.linkName(c.wan), c.batch.label)
		sr := all[label]
		if sr == nil {
			sr = &series{label: label}
			all[label] = sr
			order = append(order, label)
		}
		rate := float64(c.batch.bytes) / mb / c.d.Seconds()
		if o := orthanc[c.key()]; o > 0 {
			sr.ratios = append(sr.ratios, rate/o)
		}
		if c.wan && tb.cfg.link.Mbit > 0 {
			sr.shares = append(sr.shares, 100*rate/(tb.cfg.link.Mbit/8))
		}
	}
	var lines []string
	for _, label := range order {
		sr := all[label]
		var parts []string
		if len(sr.ratios) > 0 {
			parts = append(parts, "gateway/orthanc "+withMedian(sr.ratios, "%.2f"))
		}
		if len(sr.shares) > 0 {
			parts = append(parts, "share of the link "+withMedian(sr.shares, "%.0f %%"))
		}
		if len(parts) > 0 {
			lines = append(lines, "- "+label+": "+strings.Join(parts, "; "))
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return fmt.Sprintf("Round by round (%d rounds; each compared with Orthanc in the same round):\n\n%s\n\n", tb.cfg.rounds, strings.Join(lines, "\n"))
}

// receiverStagesTable says where each gateway receiver spent its time
// while a case was forwarded to it (its store stages, from its /metrics).
func (tb *transferBench) receiverStagesTable(cases []forwardCase) string {
	var s strings.Builder
	s.WriteString("### The receiving gateway's store stages while forwarding\n\n| backend | link | data | mean ms per stage (audit: per request) |\n|---|---|---|---|\n")
	rows := 0
	for _, c := range cases {
		if c.system != "gateway" || c.err != nil || c.receiverStages == "" {
			continue
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s |\n", tb.systemCell(c.backend, c.round), tb.linkName(c.wan), c.batch.label, c.receiverStages)
		rows++
	}
	if rows == 0 {
		return ""
	}
	s.WriteString("\n" + stagesNote + "\n\n")
	return s.String()
}
