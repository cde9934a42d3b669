package cluster

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// TestRedisClusterMasterKilled: two gateways keep their state on one
// 3-master Redis Cluster (AOF, appendfsync always, no replicas) and their
// blobs in MinIO. While hampshire takes studies over STOW-RS and sends each
// to surrey, the master holding hampshire's transfer queue is SIGKILLed and
// started again on its AOF 3 s later (the cluster is down meanwhile: a slot
// range has no master). Every study hampshire acknowledged is then held,
// byte-identical, and every transfer it accepted completes with the study
// at surrey.
//
// Then a master holding index shards but neither queue nor audit log loses
// its data outright (SIGKILL, AOF deleted, restarted empty on its slots, as
// after a lost disk or a failover to a replica that had not caught up):
// hampshire's QIDO misses studies, and gateway reindex from object storage
// gives every acknowledged instance back.
func TestRedisClusterMasterKilled(t *testing.T) {
	requireTools(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	rc, err := StartRedisCluster(ctx, filepath.Join(dir, "redis"), 3)
	if err != nil {
		if os.Getenv("CI") != "true" && strings.Contains(err.Error(), ErrToolMissing.Error()) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(rc.Kill)
	minio, err := StartMinIO(ctx, "", filepath.Join(dir, "minio"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = minio.Kill() })
	b := &testBackends{minio: minio}
	state := func(name string) []string { return []string{"--redis-url", rc.URL(), "--redis-prefix", name + ":"} }
	surrey := newGateway(t, b, "surrey", "", state("surrey")...)
	mustStart(t, ctx, surrey)
	hampshire := newGateway(t, b, "hampshire", peerConfig("surrey", surrey.Addr(), 1<<20),
		append(state("hampshire"), "--transfer-lease", "3s")...)
	mustStart(t, ctx, hampshire)

	opts, err := goredis.ParseClusterURL(rc.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClusterClient(opts)
	defer rdb.Close()
	masterOf := func(key string) *Redis {
		t.Helper()
		node, err := rdb.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rc.Masters {
			if r.Addr() == node.Options().Addr {
				return r
			}
		}
		t.Fatalf("no master at %s", node.Options().Addr)
		return nil
	}

	// Phase 1: the queue's master killed and restarted on its AOF while
	// studies are stored and transferred.
	queueMaster := masterOf("hampshire:{xfer}:all")
	var (
		mu        sync.Mutex
		acked     [][]synth.Instance
		transfers = map[string][]synth.Instance{}
		refused   int
	)
	store := func(seed uint64) bool {
		study := synth.Study(synth.StudySpec{Seed: seed, Patient: int(seed % 5), InstancesPerSeries: 3, Rows: 16, Columns: 16})
		resp, err := hampshire.Client().Store(ctx, "", Instances(study), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			mu.Lock()
			refused++
			mu.Unlock()
			return false
		}
		mu.Lock()
		acked = append(acked, study)
		mu.Unlock()
		if tr, err := CreateTransfer(ctx, hampshire.Client(), study[0].StudyInstanceUID, "surrey"); err == nil {
			mu.Lock()
			transfers[tr.ID] = study
			mu.Unlock()
		}
		return true
	}
	ackedCount := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	storerDone := make(chan struct{})
	stopStoring := make(chan struct{})
	go func() {
		defer close(storerDone)
		for seed := uint64(9100); ; seed++ {
			select {
			case <-stopStoring:
				return
			default:
			}
			if !store(seed) {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case <-ctx.Done():
				t.Fatalf("waiting for %s: %v", what, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	waitFor("6 studies stored", func() bool { return ackedCount() >= 6 })
	if err := queueMaster.Kill(); err != nil {
		t.Fatal(err)
	}
	atKill := ackedCount()
	time.Sleep(3 * time.Second)
	if err := queueMaster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rc.WaitOK(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("6 more studies stored after the restart", func() bool { return ackedCount() >= atKill+6 })
	close(stopStoring)
	<-storerDone
	mu.Lock()
	t.Logf("killed the queue's master %s with %d studies acknowledged; %d acknowledged in all, %d STOW requests refused, %d transfers accepted",
		queueMaster.Addr(), atKill, len(acked), refused, len(transfers))
	mu.Unlock()

	checkHeld := func(phase string) {
		t.Helper()
		for _, study := range acked {
			got, err := hampshire.Client().StudySHA256(ctx, study[0].StudyInstanceUID, true)
			if err != nil {
				t.Errorf("%s: study %s: %v", phase, study[0].StudyInstanceUID, err)
				continue
			}
			for _, in := range study {
				if sum, ok := got[in.SOPInstanceUID]; !ok || sum != SHA256(in) {
					t.Errorf("%s: acknowledged instance %s lost or changed (sha256 %q)", phase, in.SOPInstanceUID, sum)
				}
			}
		}
	}
	checkHeld("after the queue's master restarted on its AOF")
	for id, study := range transfers {
		done, err := waitTransfer(ctx, hampshire, id, 2*time.Minute, nil)
		if err != nil {
			t.Fatalf("transfer %s: %v", id, err)
		}
		if done.State != gateway.StateCompleted {
			t.Fatalf("transfer %s: %s %q", id, done.State, done.LastError)
		}
		checkArrived(t, ctx, surrey, study)
	}

	// Phase 2: a master with index shards loses everything.
	keep := map[*Redis]bool{}
	for _, k := range []string{"hampshire:{xfer}:all", "surrey:{xfer}:all", "hampshire:{audit}:head", "surrey:{audit}:head"} {
		keep[masterOf(k)] = true
	}
	var victim *Redis
	for _, r := range rc.Masters {
		if !keep[r] {
			victim = r
		}
	}
	if victim == nil {
		t.Skip("the queues and audit logs of both gateways cover every master: no master to wipe without losing them")
	}
	studyKeys := func() int {
		node := goredis.NewClient(&goredis.Options{Addr: victim.Addr()})
		defer node.Close()
		n := 0
		iter := node.Scan(ctx, 0, "hampshire:{x*}:s:*", 1000).Iterator()
		for iter.Next(ctx) {
			n++
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// missing returns the acknowledged studies QIDO does not list.
	missing := func() []string {
		t.Helper()
		studies, err := hampshire.Client().Search(ctx, "/studies", url.Values{"limit": {"1000"}})
		if err != nil {
			t.Fatal(err)
		}
		listed := map[string]bool{}
		for _, o := range studies {
			listed[o.Str(dicomcodec.TagStudyInstanceUID)] = true
		}
		var out []string
		for _, study := range acked {
			if !listed[study[0].StudyInstanceUID] {
				out = append(out, study[0].StudyInstanceUID)
			}
		}
		return out
	}
	for seed := uint64(9500); studyKeys() == 0; seed++ {
		if seed == 9600 {
			t.Fatalf("100 more studies and none in a shard of %s", victim.Addr())
		}
		if !store(seed) {
			t.Fatal("STOW refused with the cluster up")
		}
	}
	lostStudies := studyKeys()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"appendonlydir", "appendonly.aof", "dump.rdb"} {
		if err := os.RemoveAll(filepath.Join(victim.Dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := victim.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rc.WaitOK(ctx); err != nil {
		t.Fatal(err)
	}
	lost := missing()
	if len(lost) == 0 {
		t.Fatalf("%s held %d study summaries and lost its data, yet QIDO lists every acknowledged study", victim.Addr(), lostStudies)
	}
	t.Logf("%s lost its data (%d study summaries): QIDO misses %d of %d acknowledged studies", victim.Addr(), lostStudies, len(lost), len(acked))

	if err := hampshire.Stop(); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"reindex"}, state("hampshire")...)
	args = append(args, minio.S3Args("hampshire")...)
	if out, err := exec.CommandContext(ctx, gatewayBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("gateway reindex: %v\n%s", err, out)
	} else {
		t.Logf("gateway reindex: %s", strings.TrimSpace(string(out)))
	}
	mustStart(t, ctx, hampshire)
	if lost := missing(); len(lost) > 0 {
		t.Errorf("after gateway reindex QIDO still misses %d acknowledged studies: %v", len(lost), lost)
	}
	checkHeld("after reindex")
}
