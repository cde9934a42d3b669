// Command soak runs two gateways, hampshire → surrey, on their own Redis
// (AOF) and MinIO for a set time under concurrent mixed traffic — STOW-RS
// clients storing small and large synthetic studies, QIDO-RS and WADO-RS
// readers — while hampshire forwards everything it stores to surrey by a
// routing rule. During the run it injects faults, each announced with a
// timestamp: Redis SIGKILLed and restarted on its AOF, MinIO stopped and
// started again, surrey SIGKILLed and restarted, and a burst of malformed
// and oversized requests. At the end it verifies that every instance whose
// STOW-RS succeeded is at hampshire and at surrey byte-identical, exactly
// once, that both audit chains verify, and reports throughput over time,
// status counts, p99 latencies and the gateways' memory. It exits non-zero
// on any violation.
//
//	go run ./cmd/soak -duration 10m
//
// Everything it starts runs on 127.0.0.1 and is stopped when it ends (also
// on Ctrl-C); -keep leaves the work directory (logs, data) behind.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dicom-gateway/gateway/internal/cluster"
)

type options struct {
	duration    time.Duration
	outage      time.Duration
	stowClients int
	qidoClients int
	wadoClients int
	gatewayBin  string
	workDir     string
	keep        bool
	maxStow     int
	seed        uint64
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long traffic runs (faults are spread over it)")
	flag.DurationVar(&o.outage, "outage", 0, "how long MinIO stays stopped (default duration/20, between 10s and 30s)")
	flag.IntVar(&o.stowClients, "stow-clients", 4, "concurrent STOW-RS clients")
	flag.IntVar(&o.qidoClients, "qido-clients", 2, "concurrent QIDO-RS readers")
	flag.IntVar(&o.wadoClients, "wado-clients", 2, "concurrent WADO-RS readers")
	flag.StringVar(&o.gatewayBin, "gateway", "", "gateway binary (default: go build ./cmd/gateway into the work directory)")
	flag.StringVar(&o.workDir, "workdir", "", "work directory (default: a new temporary directory, removed at the end unless -keep)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs and data) at the end")
	flag.IntVar(&o.maxStow, "max-concurrent-stow", 16, "hampshire's --max-concurrent-stow, when the gateway has the flag")
	flag.Uint64Var(&o.seed, "seed", uint64(time.Now().UnixNano()%1_000_000), "seed of the synthetic studies")
	flag.Parse()
	if o.outage == 0 {
		o.outage = min(max(o.duration/20, 10*time.Second), 30*time.Second)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak: ERROR:", err)
		os.Exit(2)
	}
	if !ok {
		fmt.Println("\nsoak: FAILED")
		os.Exit(1)
	}
	fmt.Println("\nsoak: PASSED")
}

func run(ctx context.Context, o options) (bool, error) {
	root, err := cluster.ModuleRoot()
	if err != nil {
		return false, err
	}
	if o.workDir == "" {
		if o.workDir, err = os.MkdirTemp("", "gateway-soak-"); err != nil {
			return false, err
		}
		if !o.keep {
			defer os.RemoveAll(o.workDir)
		}
	}
	fmt.Printf("soak: duration %v, MinIO outage %v, %d STOW / %d QIDO / %d WADO clients, seed %d, work dir %s\n",
		o.duration, o.outage, o.stowClients, o.qidoClients, o.wadoClients, o.seed, o.workDir)
	if o.gatewayBin == "" {
		o.gatewayBin = filepath.Join(o.workDir, "gateway")
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err := cluster.BuildGateway(bctx, root, o.gatewayBin)
		cancel()
		if err != nil {
			return false, err
		}
	}
	if _, err := cluster.MinIOBinary(); err != nil {
		return false, err
	}
	d, err := startDeployment(ctx, o)
	if d != nil {
		defer d.close()
	}
	if err != nil {
		return false, err
	}
	s := newSoak(o, d)
	return s.run(ctx), nil
}

// deployment is the processes of the soak.
type deployment struct {
	redis             *cluster.Redis
	minio             *cluster.MinIO
	hampshire, surrey *cluster.Gateway
}

func (d *deployment) close() {
	for _, g := range []*cluster.Gateway{d.hampshire, d.surrey} {
		if g != nil {
			_ = g.Stop()
		}
	}
	if d.redis != nil {
		_ = d.redis.Stop()
	}
	if d.minio != nil {
		_ = d.minio.Stop()
	}
}

// gatewayHasFlag reports whether `gateway serve -h` lists --name.
func gatewayHasFlag(bin, name string) bool {
	out, _ := execOutput(bin, "serve", "-h")
	return strings.Contains(out, "-"+name+" ")
}

func startDeployment(ctx context.Context, o options) (*deployment, error) {
	d := &deployment{}
	var err error
	if d.redis, err = cluster.StartRedis(ctx, filepath.Join(o.workDir, "redis"), 0); err != nil {
		return d, err
	}
	if d.minio, err = cluster.StartMinIO(ctx, "", filepath.Join(o.workDir, "minio"), 0); err != nil {
		return d, err
	}
	common := func(name string) []string {
		a := []string{"--redis-url", d.redis.URL(), "--redis-prefix", name + ":", "--log-level", "warn",
			"--max-request-bytes", fmt.Sprint(maxRequestBytes), "--max-instance-bytes", fmt.Sprint(maxInstanceBytes),
			"--transfer-lease", "15s"}
		a = append(a, d.minio.S3Args(name)...)
		if o.maxStow > 0 && gatewayHasFlag(o.gatewayBin, "max-concurrent-stow") {
			a = append(a, "--max-concurrent-stow", fmt.Sprint(o.maxStow))
		}
		return a
	}
	d.surrey, err = cluster.NewGateway(cluster.GatewayConfig{Bin: o.gatewayBin, Name: "surrey",
		Dir: filepath.Join(o.workDir, "surrey"), Args: common("surrey")})
	if err != nil {
		return d, err
	}
	hampshireConfig := fmt.Sprintf(`peers:
  - name: surrey
    url: http://%s/dicomweb
    gateway: true
    max_parallel: 4
routes:
  - name: everything-to-surrey
    destinations: [surrey]
    settle_time: 2s
`, d.surrey.Addr())
	d.hampshire, err = cluster.NewGateway(cluster.GatewayConfig{Bin: o.gatewayBin, Name: "hampshire",
		Dir: filepath.Join(o.workDir, "hampshire"), Config: hampshireConfig, Args: common("hampshire")})
	if err != nil {
		return d, err
	}
	if err := d.surrey.Start(ctx); err != nil {
		return d, err
	}
	if err := d.hampshire.Start(ctx); err != nil {
		return d, err
	}
	fmt.Printf("soak: redis %s (AOF in %s), minio %s, hampshire %s → surrey %s\n",
		d.redis.Addr(), d.redis.Dir, d.minio.Endpoint(), d.hampshire.URL(), d.surrey.URL())
	return d, nil
}
