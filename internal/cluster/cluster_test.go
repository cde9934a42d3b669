package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// gatewayBin is bin/gateway, built once by TestMain.
var gatewayBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "cluster-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	gatewayBin = filepath.Join(dir, "gateway")
	if bin := os.Getenv("CLUSTER_GATEWAY_BIN"); bin != "" {
		gatewayBin = bin // a prebuilt binary, e.g. of a patched tree
	} else if err := BuildGateway(ctx, root, gatewayBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// requireTools skips (fails under CI=true) when redis-server or the MinIO
// binary is missing.
func requireTools(t *testing.T, minio bool) {
	t.Helper()
	_, err := RedisBinary()
	if err == nil && minio {
		_, err = MinIOBinary()
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %v", err)
		}
		t.Skipf("skipping process-level fault test: %v", err)
	}
}

// testBackends are the processes a test's gateways use: Redis and MinIO,
// or nothing for the embedded default.
type testBackends struct {
	redis *Redis
	minio *MinIO
}

// startBackends starts a Redis and a MinIO of the test's own (with kind
// "redis+minio"), stopped in t.Cleanup.
func startBackends(t *testing.T, ctx context.Context, kind string) *testBackends {
	t.Helper()
	b := &testBackends{}
	if kind == "embedded" {
		return b
	}
	requireTools(t, true)
	dir := t.TempDir()
	var err error
	if b.redis, err = StartRedis(ctx, filepath.Join(dir, "redis"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.redis.Kill() })
	if b.minio, err = StartMinIO(ctx, "", filepath.Join(dir, "minio"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.minio.Kill() })
	return b
}

// args are the serve flags of gateway name on these backends.
func (b *testBackends) args(name string, extra ...string) []string {
	var a []string
	if b.redis != nil {
		a = append(a, "--redis-url", b.redis.URL(), "--redis-prefix", name+":")
	}
	if b.minio != nil {
		a = append(a, b.minio.S3Args(name)...)
	}
	return append(a, extra...)
}

// newGateway prepares a gateway process killed in t.Cleanup; its log is
// printed when the test failed.
func newGateway(t *testing.T, b *testBackends, name, config string, extra ...string) *Gateway {
	t.Helper()
	g, err := NewGateway(GatewayConfig{Bin: gatewayBin, Name: name, Dir: filepath.Join(t.TempDir(), name),
		Config: config, Args: b.args(name, extra...)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = g.Kill()
		if t.Failed() {
			t.Logf("%s log (tail):\n%s", name, g.LogTail(6000))
		}
	})
	return g
}

// peerConfig is a --config with one gateway peer at url.
func peerConfig(name, addr string, maxRequestBytes int) string {
	return fmt.Sprintf("peers:\n  - name: %s\n    url: http://%s/dicomweb\n    gateway: true\n    max_parallel: 2\n    max_request_bytes: %d\n",
		name, addr, maxRequestBytes)
}

func mustStart(t *testing.T, ctx context.Context, g *Gateway) {
	t.Helper()
	if err := g.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// storeStudy stores the study at g, one STOW-RS request per series.
func storeStudy(t *testing.T, ctx context.Context, g *Gateway, study []synth.Instance) {
	t.Helper()
	for i := 0; i < len(study); {
		j := i
		for j < len(study) && study[j].SeriesInstanceUID == study[i].SeriesInstanceUID {
			j++
		}
		if err := StoreAll(ctx, g.Client(), study[i:j]); err != nil {
			t.Fatal(err)
		}
		i = j
	}
}

// waitTransfer polls g's transfer until it is finished, stop (may be nil)
// returns true for the state seen, ctx ends or timeout passes.
func waitTransfer(ctx context.Context, g *Gateway, id string, timeout time.Duration, stop func(*gateway.Transfer) bool) (*gateway.Transfer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return g.Client().WaitTransfer(ctx, id, 100*time.Millisecond, stop)
}

// checkArrived checks that the gateway holds exactly the study's instances
// (no more, none twice) and that each is byte-identical, by the SHA-256 of
// the bytes in its storage and by QIDO-RS.
func checkArrived(t *testing.T, ctx context.Context, g *Gateway, study []synth.Instance) {
	t.Helper()
	want := map[string]string{}
	for _, in := range study {
		want[in.SOPInstanceUID] = SHA256(in)
	}
	got, err := g.Client().StudySHA256(ctx, study[0].StudyInstanceUID, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("%s holds %d instances of the study, want %d", g.Name, len(got), len(want))
	}
	for sop, sum := range want {
		switch g, ok := got[sop]; {
		case !ok:
			t.Errorf("%s lacks instance %s", g, sop)
		case g != sum:
			t.Errorf("instance %s differs: sha256 %s, sent %s", sop, g, sum)
		}
	}
	uids, err := g.Client().StudyInstances(ctx, study[0].StudyInstanceUID, 10000)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(uids)
	if n := len(slices.Compact(slices.Clone(uids))); n != len(uids) {
		t.Errorf("QIDO-RS at %s lists %d instances, %d distinct: duplicates", g.Name, len(uids), n)
	}
	if len(uids) != len(want) {
		t.Errorf("QIDO-RS at %s lists %d instances, want %d", g.Name, len(uids), len(want))
	}
}

// TestSenderKilledMidTransfer: hampshire is SIGKILLed while it sends a
// 40-instance, 4-series study (40 MiB) to surrey over a link limited to
// 6 MiB/s, and started again; with a 3 s transfer lease the restarted
// process takes the transfer over, which completes with every instance at
// surrey byte-identical, none lost, none twice.
func TestSenderKilledMidTransfer(t *testing.T) {
	for _, kind := range []string{"redis+minio", "embedded"} {
		t.Run(kind, func(t *testing.T) {
			if kind == "embedded" {
				requireTools(t, false)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			b := startBackends(t, ctx, kind)
			surrey := newGateway(t, b, "surrey", "")
			mustStart(t, ctx, surrey)
			link, err := StartProxy(surrey.Addr(), 6<<20)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { link.Close() })
			hampshire := newGateway(t, b, "hampshire", peerConfig("surrey", link.Addr(), 3<<20), "--transfer-lease", "3s")
			mustStart(t, ctx, hampshire)

			study := synth.Study(synth.StudySpec{Seed: 6001, Series: 4, InstancesPerSeries: 10, Rows: 512, Columns: 1024})
			t0 := time.Now()
			storeStudy(t, ctx, hampshire, study)
			t.Logf("stored %d instances at hampshire in %v", len(study), time.Since(t0).Round(time.Millisecond))
			t0 = time.Now()
			tr, err := CreateTransfer(ctx, hampshire.Client(), study[0].StudyInstanceUID, "surrey")
			if err != nil {
				t.Fatal(err)
			}

			// Kill once some, not all, instances are confirmed.
			var atKill *gateway.Transfer
			lastSent := -1
			_, err = waitTransfer(ctx, hampshire, tr.ID, 45*time.Second, func(x *gateway.Transfer) bool {
				if x.InstancesSent != lastSent {
					lastSent = x.InstancesSent
					t.Logf("%v: %s %d/%d sent, attempts %d", time.Since(t0).Round(time.Millisecond), x.State, x.InstancesSent, x.InstancesTotal, x.Attempts)
				}
				if atKill == nil && x.InstancesSent >= 4 && x.InstancesSent < len(study) {
					atKill = x
					if err := hampshire.Kill(); err != nil {
						t.Error(err)
					}
				}
				return atKill != nil
			})
			if atKill == nil {
				t.Fatalf("transfer not interrupted (%v): the link is too fast for the test", err)
			}
			t.Logf("SIGKILLed hampshire at %d/%d instances sent, %v after the transfer was created", atKill.InstancesSent, atKill.InstancesTotal, time.Since(t0).Round(time.Millisecond))

			start := time.Now()
			mustStart(t, ctx, hampshire)
			done, err := waitTransfer(ctx, hampshire, tr.ID, 60*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("after restart: %s in %v, %d/%d sent, attempts %d", done.State, time.Since(start).Round(time.Millisecond),
				done.InstancesSent, done.InstancesTotal, done.Attempts)
			// One worker at a time: the restarted process must take the
			// transfer over once, not have its workers steal it from each
			// other (the lease must be renewed faster than it expires).
			if n := strings.Count(hampshire.LogTail(1<<20), "lease lost"); n > 0 {
				t.Errorf("hampshire's workers took the running transfer from each other %d times (sent concurrently twice): "+
					"the heartbeat (gateway.Transfers.Heartbeat, default 10s) must be below --transfer-lease (3s)", n)
			}
			if done.State != "completed" || done.InstancesSent != len(study) {
				t.Fatalf("transfer %s, %d/%d sent, last error %q", done.State, done.InstancesSent, len(study), done.LastError)
			}
			checkArrived(t, ctx, surrey, study)
			checkArrived(t, ctx, hampshire, study)
			ts, err := hampshire.Client().ListTransfers(ctx, client.TransferQuery{StudyUID: study[0].StudyInstanceUID, Limit: 10000})
			if err != nil {
				t.Fatal(err)
			}
			if len(ts) != 1 {
				t.Errorf("hampshire lists %d transfers of the study, want 1: %+v", len(ts), ts)
			}
		})
	}
}

// TestDestinationDownThenBack: surrey is not running when the transfer is
// created; hampshire retries with backoff (the transfer stays unfinished,
// with the connection error as its last error); surrey starts and the
// transfer completes byte-identical.
func TestDestinationDownThenBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b := startBackends(t, ctx, "redis+minio")
	surrey := newGateway(t, b, "surrey", "")
	hampshire := newGateway(t, b, "hampshire", peerConfig("surrey", surrey.Addr(), 64<<20))
	mustStart(t, ctx, hampshire)

	study := synth.Study(synth.StudySpec{Seed: 6002, Series: 2, InstancesPerSeries: 3})
	storeStudy(t, ctx, hampshire, study)
	tr, err := CreateTransfer(ctx, hampshire.Client(), study[0].StudyInstanceUID, "surrey")
	if err != nil {
		t.Fatal(err)
	}
	var down *gateway.Transfer
	deadline := time.Now().Add(20 * time.Second)
	for down == nil && time.Now().Before(deadline) {
		x, err := hampshire.Client().Transfer(ctx, tr.ID)
		if err != nil {
			t.Fatal(err)
		}
		if x.State.Terminal() {
			t.Fatalf("transfer %s while surrey is down: %q", x.State, x.LastError)
		}
		if x.Attempts >= 2 && x.LastError != "" {
			down = x
		}
		time.Sleep(100 * time.Millisecond)
	}
	if down == nil {
		t.Fatal("no failed attempt recorded while surrey was down")
	}
	t.Logf("while surrey is down: state %s, attempts %d, last error %q", down.State, down.Attempts, down.LastError)

	mustStart(t, ctx, surrey)
	start := time.Now()
	done, err := waitTransfer(ctx, hampshire, tr.ID, 60*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("surrey up: %s %v later, attempts %d", done.State, time.Since(start).Round(time.Millisecond), done.Attempts)
	if done.State != "completed" {
		t.Fatalf("transfer %s: %q", done.State, done.LastError)
	}
	checkArrived(t, ctx, surrey, study)
}

// TestDestinationRefusesInstances: surrey already holds two of the study's
// SOP Instance UIDs with other bytes; the transfer ends failed, naming both
// instances and the reason, surrey keeps its own two unaltered and stores
// the other instances byte-identical.
func TestDestinationRefusesInstances(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b := startBackends(t, ctx, "redis+minio")
	surrey := newGateway(t, b, "surrey", "")
	mustStart(t, ctx, surrey)
	hampshire := newGateway(t, b, "hampshire", peerConfig("surrey", surrey.Addr(), 64<<20))
	mustStart(t, ctx, hampshire)

	study := synth.Study(synth.StudySpec{Seed: 6003, Series: 2, InstancesPerSeries: 3})
	storeStudy(t, ctx, hampshire, study)
	clash := []synth.Instance{study[1], study[4]}
	for i := range clash {
		clash[i].PixelSeed += 99 // same UIDs, other bytes
	}
	if err := StoreAll(ctx, surrey.Client(), clash); err != nil {
		t.Fatal(err)
	}

	tr, err := CreateTransfer(ctx, hampshire.Client(), study[0].StudyInstanceUID, "surrey")
	if err != nil {
		t.Fatal(err)
	}
	done, err := waitTransfer(ctx, hampshire, tr.ID, 60*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("transfer %s after %d attempts: %s", done.State, done.Attempts, done.LastError)
	if done.State != "failed" {
		t.Fatalf("transfer %s, want failed", done.State)
	}
	for _, in := range clash {
		if !strings.Contains(done.LastError, in.SOPInstanceUID) {
			t.Errorf("last error does not name refused instance %s: %q", in.SOPInstanceUID, done.LastError)
		}
	}
	if !strings.Contains(done.LastError, "refused 2 of 6") {
		t.Errorf("last error does not say how many were refused: %q", done.LastError)
	}
	if done.InstancesSent != len(study)-len(clash) {
		t.Errorf("instances_sent %d, want %d", done.InstancesSent, len(study)-len(clash))
	}
	// surrey holds its own two instances unaltered and the four others as sent.
	var want []synth.Instance
	for _, in := range study {
		if in.SOPInstanceUID != clash[0].SOPInstanceUID && in.SOPInstanceUID != clash[1].SOPInstanceUID {
			want = append(want, in)
		}
	}
	checkArrived(t, ctx, surrey, append(want, clash...))
}

// TestReceiverKilledMidTransfer: surrey is SIGKILLed while it receives a
// study over a slow link (so it dies holding the ingest lock of the
// instance it was storing) and started again; the transfer must complete
// within a minute, byte-identical, none lost or twice. (Found by the soak:
// a lock left by a killed receiver made the resent instance wait for the
// lock's 30-minute TTL while the sender's worker hung.)
func TestReceiverKilledMidTransfer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b := startBackends(t, ctx, "redis+minio")
	surrey := newGateway(t, b, "surrey", "")
	mustStart(t, ctx, surrey)
	link, err := StartProxy(surrey.Addr(), 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	hampshire := newGateway(t, b, "hampshire", peerConfig("surrey", link.Addr(), 3<<20), "--transfer-lease", "3s")
	mustStart(t, ctx, hampshire)

	study := synth.Study(synth.StudySpec{Seed: 6004, Series: 2, InstancesPerSeries: 10, Rows: 512, Columns: 1024})
	storeStudy(t, ctx, hampshire, study)
	tr, err := CreateTransfer(ctx, hampshire.Client(), study[0].StudyInstanceUID, "surrey")
	if err != nil {
		t.Fatal(err)
	}
	var atKill *gateway.Transfer
	_, _ = waitTransfer(ctx, hampshire, tr.ID, 45*time.Second, func(x *gateway.Transfer) bool {
		if atKill == nil && x.InstancesSent >= 2 && x.InstancesSent < len(study) {
			atKill = x
			if err := surrey.Kill(); err != nil {
				t.Error(err)
			}
		}
		return atKill != nil
	})
	if atKill == nil {
		t.Fatal("transfer not interrupted: the link is too fast for the test")
	}
	t.Logf("SIGKILLed surrey at %d/%d instances sent", atKill.InstancesSent, atKill.InstancesTotal)
	time.Sleep(time.Second)
	mustStart(t, ctx, surrey)
	start := time.Now()
	done, err := waitTransfer(ctx, hampshire, tr.ID, 60*time.Second, nil)
	if err != nil {
		t.Fatalf("%v (a receiver killed while storing must not block the resent instances)", err)
	}
	t.Logf("surrey restarted: transfer %s %v later, attempts %d", done.State, time.Since(start).Round(time.Millisecond), done.Attempts)
	if done.State != "completed" {
		t.Fatalf("transfer %s: %q", done.State, done.LastError)
	}
	checkArrived(t, ctx, surrey, study)
}

// TestProcCPU: the CPU time of this process grows while it computes, and
// a process that does not exist is an error.
func TestProcCPU(t *testing.T) {
	before, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	x := uint64(1)
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
		for range 1000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	after, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 100*time.Millisecond {
		t.Errorf("CPU time grew by %v over 300 ms of computing (x=%d), want at least 100 ms", after-before, x)
	}
	if _, err := ProcCPU(1 << 30); err == nil {
		t.Error("ProcCPU of a process that does not exist: no error")
	}
}
