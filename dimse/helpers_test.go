package dimse

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
)

// ingestStore is the test's Store: the real gateway.Ingester over the
// embedded backends, as cmd/gateway wires it (minus routing), recording
// the audit summaries it is given.
type ingestStore struct {
	in *gateway.Ingester
	// began, when set, receives a value as each Store begins.
	began chan struct{}

	mu        sync.Mutex
	summaries []Summary
	callers   []Caller
}

func (s *ingestStore) AcceptsTransferSyntax(uid string) bool {
	return dicomcodec.ReadsTransferSyntax(uid)
}

func (s *ingestStore) Open(ctx context.Context, c Caller) (StoreSession, error) {
	return &ingestSession{s: s, ctx: gateway.WithPrincipal(ctx, c.Principal()), c: c}, nil
}

// ingestSession stores with Begin and Finish, as the store service does.
type ingestSession struct {
	s   *ingestStore
	ctx context.Context
	c   Caller
}

func (ss *ingestSession) Store(r io.Reader, sopClassUID, sopInstanceUID string) (*gateway.InstanceRecord, error) {
	if ss.s.began != nil {
		ss.s.began <- struct{}{}
	}
	p, err := ss.s.in.Begin(ss.ctx, r, gateway.StoreOptions{SOPClassUID: sopClassUID, SOPInstanceUID: sopInstanceUID})
	if err != nil {
		return nil, err
	}
	return p.Finish(ss.ctx)
}

func (ss *ingestSession) Close(sum Summary) error {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	ss.s.summaries = append(ss.s.summaries, sum)
	ss.s.callers = append(ss.s.callers, ss.c)
	return nil
}

func (s *ingestStore) audits() ([]Caller, []Summary) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Caller(nil), s.callers...), append([]Summary(nil), s.summaries...)
}

type testServer struct {
	*Server
	store *ingestStore
	b     *backendtest.Backends
	addr  string
}

// startServer starts a Server on a loopback port over fresh embedded
// backends; configure may change its fields before it listens.
func startServer(t *testing.T, configure func(*Server)) *testServer {
	t.Helper()
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	store := &ingestStore{in: &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}}
	access, err := NewAccess(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{AETitle: "GATEWAY", Store: store, Access: access}
	if configure != nil {
		configure(srv)
	}
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &testServer{Server: srv, store: store, b: b, addr: srv.Addr().String()}
}

func (ts *testServer) port() string {
	_, port, _ := net.SplitHostPort(ts.addr)
	return port
}

// tool returns the path of a DCMTK tool, skipping the test when it is
// missing (failing under CI=true).
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing: apt-get install dcmtk", name)
		}
		t.Skipf("%s missing: apt-get install dcmtk", name)
	}
	return p
}

// run runs a command with a deadline and returns its combined output.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool(t, name), args...).CombinedOutput()
	return string(out), err
}

// datasetSHA256 is the SHA-256 of a Part 10 stream's dataset: the bytes
// after the File Meta Information.
func datasetSHA256(t *testing.T, r io.Reader) string {
	t.Helper()
	ds, err := SkipFileMeta(r)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, ds); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileDatasetSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return datasetSHA256(t, f)
}

// storedDatasetSHA256 reads a stored instance back from the blob store.
func (ts *testServer) storedDatasetSHA256(t *testing.T, sop string) (string, *gateway.InstanceRecord) {
	t.Helper()
	rec, err := ts.b.Index.GetInstance(t.Context(), sop)
	if err != nil {
		t.Fatalf("instance %s not indexed: %v", sop, err)
	}
	rc, err := ts.b.Blobs.Get(t.Context(), rec.Key(), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	return datasetSHA256(t, rc), rec
}

// noGoroutineLeak records the goroutine count and, when the test ends,
// waits (bounded) for it to come back down.
func noGoroutineLeak(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		var now int
		for range 250 {
			now = runtime.NumGoroutine()
			if now <= before {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Errorf("goroutines: %d before, %d after the test settled:\n%s", before, now, buf[:n])
	})
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startStoreSCP runs DCMTK's storescp on port, writing what it receives
// into dir, and returns once it answers a C-ECHO; the returned function
// stops it (also done when the test ends).
func startStoreSCP(t *testing.T, port int, dir string) func() {
	t.Helper()
	// +B: write each dataset bit-preserving, exactly as it arrived.
	cmd := exec.Command(tool(t, "storescp"), "+B", "+xa", "-aet", "STORESCP", "-od", dir, strconv.Itoa(port))
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(stop)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for i := 0; ; i++ {
		cl, err := Dial(t.Context(), addr, DialOptions{CallingAE: "PROBE", CalledAE: "STORESCP",
			Contexts: []PresentationContext{{AbstractSyntax: VerificationSOPClass, TransferSyntax: []string{ImplicitVRLittleEndian}}}})
		if err == nil {
			_, err = cl.Echo(t.Context())
			_ = cl.Release()
			if err == nil {
				return stop
			}
		}
		if i == 200 {
			stop()
			t.Fatalf("storescp not answering on %s: %v\n%s", addr, err, logs.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// dirDatasets returns the sorted dataset SHA-256s of the files in dir.
func dirDatasets(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var sums []string
	for _, e := range entries {
		sums = append(sums, fileDatasetSHA256(t, filepath.Join(dir, e.Name())))
	}
	slices.Sort(sums)
	return sums
}

// wireDatasets runs storescu with opts and paths against storescp +B and
// returns the datasets as they crossed the wire: DCMTK re-serialises a
// file when it sends it (lengths, padding), so this, not the file, is what
// a receiver must keep byte for byte.
func wireDatasets(t *testing.T, opts []string, paths ...string) []string {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	stop := startStoreSCP(t, port, dir)
	defer stop()
	args := append([]string{"-aec", "STORESCP"}, opts...)
	args = append(append(args, "127.0.0.1", strconv.Itoa(port)), paths...)
	out, err := run(t, "storescu", args...)
	if err != nil {
		t.Fatalf("storescu to storescp: %v\n%s", err, out)
	}
	return dirDatasets(t, dir)
}

// storeSCU runs storescu with opts and paths against the server.
func (ts *testServer) storeSCU(t *testing.T, opts []string, paths ...string) {
	t.Helper()
	args := append([]string{"-aet", "MODALITY", "-aec", "GATEWAY"}, opts...)
	args = append(append(args, "127.0.0.1", ts.port()), paths...)
	if out, err := run(t, "storescu", args...); err != nil {
		t.Fatalf("storescu: %v\n%s", err, out)
	}
}

// records returns the index entry of every stored blob.
func (ts *testServer) records(t *testing.T) []*gateway.InstanceRecord {
	t.Helper()
	var recs []*gateway.InstanceRecord
	if err := ts.b.Blobs.Walk(t.Context(), "studies/", func(bi gateway.BlobInfo) error {
		parts := strings.Split(bi.Key, "/")
		rec, err := ts.b.Index.GetInstance(t.Context(), strings.TrimSuffix(parts[len(parts)-1], ".dcm"))
		recs = append(recs, rec)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return recs
}

// waitAudits waits (bounded) until n associations are audited: a server
// audits an association once it has seen the peer close it, which may be
// just after the peer's tool has exited.
func (ts *testServer) waitAudits(t *testing.T, n int) ([]Caller, []Summary) {
	t.Helper()
	for range 250 {
		if c, s := ts.store.audits(); len(s) >= n {
			return c, s
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ts.store.audits()
}
