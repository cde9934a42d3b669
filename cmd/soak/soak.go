package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/internal/cluster"
	"github.com/dicom-gateway/gateway/internal/synth"
)

// acked is an instance whose STOW-RS the gateway confirmed.
type acked struct {
	study, series, sop, sha string
	size                    int64
}

type soak struct {
	o   options
	d   *deployment
	rec *recorder

	mu    sync.Mutex
	acked map[string]acked // by SOP Instance UID
	list  []string         // SOP UIDs, for random picks

	mem *memSampler
}

func newSoak(o options, d *deployment) *soak {
	return &soak{o: o, d: d, acked: map[string]acked{}}
}

// clients: STOW-RS ones send Expect: 100-continue so that a 503 for
// backpressure costs no upload.
func newClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		MaxIdleConnsPerHost: 8, ExpectContinueTimeout: 2 * time.Second, IdleConnTimeout: 30 * time.Second,
	}}
}

func (s *soak) run(ctx context.Context) bool {
	s.rec = newRecorder()
	s.mem = startMemSampler(s.rec, []*cluster.Gateway{s.d.hampshire, s.d.surrey})
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range s.o.stowClients {
		wg.Go(func() { s.stowLoop(trafficCtx, i) })
	}
	for i := range s.o.qidoClients {
		wg.Go(func() { s.qidoLoop(trafficCtx, i) })
	}
	for i := range s.o.wadoClients {
		wg.Go(func() { s.wadoLoop(trafficCtx, i) })
	}
	s.rec.announce("traffic started")
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		s.faults(trafficCtx)
	}()
	select {
	case <-ctx.Done():
	case <-time.After(s.o.duration):
	}
	stopTraffic()
	<-faultsDone
	wg.Wait()
	s.rec.announce("traffic stopped: %d instances acknowledged by STOW-RS", len(s.acked))
	if ctx.Err() != nil {
		s.rec.violation("interrupted")
		return false
	}
	s.verify(ctx)
	s.mem.stop()
	s.rec.report(30 * time.Second)
	s.mem.report()
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	if s.rec.nViolation > 0 {
		fmt.Printf("\n== %d VIOLATIONS\n", s.rec.nViolation)
		for _, v := range s.rec.violations {
			fmt.Println("  ", v)
		}
		return false
	}
	return true
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// retryAfter turns a Retry-After header into a wait, capped for the soak.
func retryAfter(v string) time.Duration {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return time.Second
	}
	return min(time.Duration(n)*time.Second, 2*time.Second)
}

// stowLoop stores synthetic studies: mostly small (64×64), some medium
// (256×256), every tenth large (1024×1024, 2 MiB an instance).
func (s *soak) stowLoop(ctx context.Context, client int) {
	c := newClient(2 * time.Minute)
	rng := rand.New(rand.NewPCG(s.o.seed, uint64(client)))
	for i := uint64(0); ctx.Err() == nil; i++ {
		spec := synth.StudySpec{
			Seed:    (s.o.seed*100+uint64(client)+1)*10_000_000 + i,
			Patient: rng.IntN(6), Series: 1 + rng.IntN(2), InstancesPerSeries: 1 + rng.IntN(4),
			Rows: 64, Columns: 64,
		}
		switch r := rng.IntN(10); {
		case r == 0:
			spec.Rows, spec.Columns, spec.Series, spec.InstancesPerSeries = 1024, 1024, 1, 1+rng.IntN(3)
		case r < 4:
			spec.Rows, spec.Columns = 256, 256
		}
		study := synth.Study(spec)
		// Like a PACS, resend what the gateway did not confirm (it said
		// 503, or failed an instance with 0xA700) until it does.
		for attempt := 0; len(study) > 0 && attempt < 10; attempt++ {
			if attempt > 0 && !sleep(ctx, 500*time.Millisecond) {
				break
			}
			study = s.stowOnce(ctx, c, study)
		}
		if !sleep(ctx, 20*time.Millisecond) {
			return
		}
	}
}

// stowOnce sends the instances in one STOW-RS request and returns those
// the answer did not confirm as stored.
func (s *soak) stowOnce(ctx context.Context, c *http.Client, study []synth.Instance) []synth.Instance {
	api := s.d.hampshire.Client()
	api.HTTP = c
	start := time.Now()
	// Not ctx: a request in flight when the traffic stops runs to its end,
	// so that its outcome is known.
	resp, err := api.Store(context.WithoutCancel(ctx), "", cluster.Instances(study), http.Header{"Expect": {"100-continue"}})
	status, ra := storeStatus(resp, err)
	stored := map[string]bool{}
	if status == http.StatusOK || status == http.StatusAccepted {
		if ans, err := resp.Answer(); err == nil {
			for _, it := range ans.Stored {
				stored[it.SOPInstanceUID] = true
			}
		}
		if status == http.StatusOK && len(stored) != len(study) {
			s.rec.violation("STOW 200 confirms %d of %d instances", len(stored), len(study))
		}
	}
	var bytesStored int64
	s.mu.Lock()
	for _, in := range study {
		if stored[in.SOPInstanceUID] {
			a := acked{study: in.StudyInstanceUID, series: in.SeriesInstanceUID, sop: in.SOPInstanceUID, sha: cluster.SHA256(in), size: in.Size()}
			if _, dup := s.acked[a.sop]; !dup {
				s.list = append(s.list, a.sop)
			}
			s.acked[a.sop] = a
			bytesStored += a.size
		}
	}
	s.mu.Unlock()
	s.rec.observe("stow", start, status, ra, bytesStored, err, false)
	if len(stored) > 0 {
		s.rec.mu.Lock()
		s.rec.samples = append(s.rec.samples, sample{at: start.Sub(s.rec.start), op: "stow-instances", bytes: int64(len(stored)), status: 200})
		s.rec.mu.Unlock()
	}
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		sleep(ctx, retryAfter(ra))
	} else if status <= 0 {
		sleep(ctx, 500*time.Millisecond)
	}
	var rest []synth.Instance
	for _, in := range study {
		if !stored[in.SOPInstanceUID] {
			rest = append(rest, in)
		}
	}
	return rest
}

// rawRequest sends a request the client would never build (garbage
// bodies, wrong media types) and returns its status and Retry-After.
func (s *soak) rawRequest(ctx context.Context, c *http.Client, method, u, ct string, body func() io.Reader, header map[string]string) (int, string, error) {
	var rd io.Reader
	if body != nil {
		rd = body()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, "", err
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return statusOf(nil, err), "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), nil
}

// storeStatus is a STOW-RS outcome as the recorder counts it: the
// answer's status and Retry-After, or what statusOf makes of the error.
func storeStatus(resp *client.StoreResponse, err error) (status int, retryAfter string) {
	if err != nil {
		return statusOf(nil, err), ""
	}
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

var qidoQueries = []string{
	"/dicomweb/studies?limit=50",
	"/dicomweb/studies?PatientName=Pryce*&limit=20",
	"/dicomweb/studies?ModalitiesInStudy=CT&limit=20&includefield=all",
	"/dicomweb/series?limit=50",
	"/dicomweb/instances?limit=20",
}

func (s *soak) qidoLoop(ctx context.Context, client int) {
	c := newClient(30 * time.Second)
	rng := rand.New(rand.NewPCG(s.o.seed, 100+uint64(client)))
	for ctx.Err() == nil {
		q := qidoQueries[rng.IntN(len(qidoQueries))]
		if a, ok := s.pick(rng); ok && rng.IntN(2) == 0 {
			q = "/dicomweb/studies/" + a.study + "/instances"
		}
		req, _ := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, s.d.hampshire.URL()+q, nil)
		req.Header.Set("Accept", "application/dicom+json")
		start := time.Now()
		resp, err := c.Do(req)
		status := statusOf(resp, err)
		ra := ""
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ra = resp.Header.Get("Retry-After")
		}
		s.rec.observe("qido", start, status, ra, 0, err, false)
		if status == http.StatusServiceUnavailable {
			sleep(ctx, retryAfter(ra))
		}
		if !sleep(ctx, 50*time.Millisecond) {
			return
		}
	}
}

func (s *soak) pick(rng *rand.Rand) (acked, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.list) == 0 {
		return acked{}, false
	}
	return s.acked[s.list[rng.IntN(len(s.list))]], true
}

// wadoLoop reads random acknowledged instances back (WADO-RS instance as
// application/dicom, or WADO-URI) and checks their SHA-256.
func (s *soak) wadoLoop(ctx context.Context, client int) {
	c := newClient(60 * time.Second)
	rng := rand.New(rand.NewPCG(s.o.seed, 200+uint64(client)))
	for ctx.Err() == nil {
		a, ok := s.pick(rng)
		if !ok {
			if !sleep(ctx, 200*time.Millisecond) {
				return
			}
			continue
		}
		u := s.d.hampshire.URL() + "/dicomweb/wado?" + url.Values{"requestType": {"WADO"}, "studyUID": {a.study},
			"seriesUID": {a.series}, "objectUID": {a.sop}, "contentType": {"application/dicom"}}.Encode()
		req, _ := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, u, nil)
		start := time.Now()
		resp, err := c.Do(req)
		status := statusOf(resp, err)
		ra := ""
		var n int64
		if err == nil {
			h := sha256.New()
			n, err = io.Copy(h, resp.Body)
			resp.Body.Close()
			ra = resp.Header.Get("Retry-After")
			if status == http.StatusOK {
				switch got := hex.EncodeToString(h.Sum(nil)); {
				case err != nil:
					// A storage failure mid-stream aborts the response: the
					// client sees a truncated body, never a "complete" wrong one.
					status = statusTransport
				case got != a.sha:
					s.rec.violation("WADO of %s returned different bytes: sha256 %s, stored %s (%d bytes)", a.sop, got, a.sha, n)
				}
			}
		}
		allowTransport := status == statusTransport && err != nil && s.rec.currentPhase() != "normal"
		s.rec.observe("wado", start, status, ra, n, err, allowTransport)
		if status == http.StatusNotFound {
			s.rec.violation("WADO of acknowledged instance %s: 404", a.sop)
		}
		if status == http.StatusServiceUnavailable {
			sleep(ctx, retryAfter(ra))
		}
		if !sleep(ctx, 50*time.Millisecond) {
			return
		}
	}
}

// faults injects the faults at fixed fractions of the duration.
func (s *soak) faults(ctx context.Context) {
	D := s.o.duration
	at := func(frac float64) bool {
		return sleep(ctx, time.Until(s.rec.start.Add(time.Duration(frac*float64(D)))))
	}
	redisDown := max(s.o.outage/3, 5*time.Second)

	if !at(0.15) {
		return
	}
	s.rec.setPhase("redis-down")
	s.rec.announce("FAULT redis: SIGKILL (down for %v)", redisDown)
	if err := s.d.redis.Kill(); err != nil {
		s.rec.violation("kill redis: %v", err)
	}
	sleep(ctx, redisDown)
	if err := s.d.redis.Start(context.WithoutCancel(ctx)); err != nil {
		s.rec.violation("restart redis: %v", err)
	}
	s.rec.announce("FAULT redis: restarted on its AOF")
	s.recovered(ctx)

	if !at(0.35) {
		return
	}
	s.rec.setPhase("minio-down")
	s.rec.announce("FAULT minio: stopped (SIGTERM) for %v", s.o.outage)
	if err := s.d.minio.Stop(); err != nil {
		s.rec.violation("stop minio: %v", err)
	}
	sleep(ctx, s.o.outage)
	if err := s.d.minio.Start(context.WithoutCancel(ctx)); err != nil {
		s.rec.violation("restart minio: %v", err)
	}
	s.rec.announce("FAULT minio: started again")
	s.recovered(ctx)

	if !at(0.55) {
		return
	}
	s.rec.setPhase("surrey-down")
	s.rec.announce("FAULT surrey: SIGKILL (down for 5s)")
	if err := s.d.surrey.Kill(); err != nil {
		s.rec.violation("kill surrey: %v", err)
	}
	sleep(ctx, 5*time.Second)
	if err := s.d.surrey.Start(context.WithoutCancel(ctx)); err != nil {
		s.rec.violation("restart surrey: %v", err)
	}
	s.rec.announce("FAULT surrey: restarted")
	s.rec.setPhase("normal")

	if !at(0.70) {
		return
	}
	s.rec.setPhase("burst")
	s.rec.announce("FAULT burst: malformed and oversized requests")
	s.burst(ctx)
	s.rec.announce("FAULT burst: over")
	s.rec.setPhase("normal")
}

// recovered waits until hampshire's /readyz answers 200 again (it must
// recover without a restart), then sets the phase back to normal.
func (s *soak) recovered(ctx context.Context) {
	s.rec.setPhase("recovering")
	start := time.Now()
	c := &http.Client{Timeout: 5 * time.Second}
	for time.Since(start) < time.Minute {
		resp, err := c.Get(s.d.hampshire.URL() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.rec.announce("hampshire ready again after %v", time.Since(start).Round(time.Millisecond))
				s.rec.setPhase("normal")
				return
			}
		}
		if !sleep(ctx, 200*time.Millisecond) {
			return
		}
	}
	s.rec.violation("hampshire not ready 1 minute after the backend came back")
	s.rec.setPhase("normal")
}

// burst sends malformed and oversized requests from 8 clients at once.
func (s *soak) burst(ctx context.Context) {
	base := s.d.hampshire.URL()
	type bad struct {
		name, method, path, ct string
		body                   func() io.Reader
		header                 map[string]string
		stow                   []synth.Instance // body: these instances
		oversized              bool
	}
	garbage := func(n int) func() io.Reader {
		return func() io.Reader { return bytes.NewReader(bytes.Repeat([]byte("\x00garbage\xff"), n/9+1)[:n]) }
	}
	multipart := func(parts ...[]byte) (func() io.Reader, string) {
		var b bytes.Buffer
		boundary := "soakboundary42"
		for _, p := range parts {
			fmt.Fprintf(&b, "--%s\r\nContent-Type: application/dicom\r\n\r\n", boundary)
			b.Write(p)
			b.WriteString("\r\n")
		}
		fmt.Fprintf(&b, "--%s--\r\n", boundary)
		return func() io.Reader { return bytes.NewReader(b.Bytes()) }, `multipart/related; type="application/dicom"; boundary=` + boundary
	}
	one := synth.Study(synth.StudySpec{Seed: 999_000_000 + s.o.seed, Rows: 64, Columns: 64})[0]
	var good bytes.Buffer
	_, _ = one.WriteTo(&good)
	truncated := good.Bytes()[:len(good.Bytes())/2]
	garbageBody, garbageCT := multipart(bytes.Repeat([]byte("\x00garbage\xff"), 600))
	truncBody, truncCT := multipart(truncated)
	huge := synth.Study(synth.StudySpec{Seed: 999_100_000 + s.o.seed, Rows: 4096, Columns: 4096})[0] // 32 MiB > --max-instance-bytes
	cases := []bad{
		{name: "json as STOW", method: "POST", path: "/dicomweb/studies", ct: "application/json", body: garbage(1000)},
		{name: "no boundary", method: "POST", path: "/dicomweb/studies", ct: "multipart/related; type=\"application/dicom\"", body: garbage(1000)},
		{name: "garbage part", method: "POST", path: "/dicomweb/studies", ct: garbageCT, body: garbageBody},
		{name: "truncated DICOM", method: "POST", path: "/dicomweb/studies", ct: truncCT, body: truncBody},
		{name: "bad UID", method: "GET", path: "/dicomweb/studies/not-a-uid/series"},
		{name: "bad query", method: "GET", path: "/dicomweb/studies?limit=-5&fuzzymatching=maybe"},
		{name: "bad frame list", method: "GET", path: "/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/0,x"},
		{name: "huge header", method: "GET", path: "/dicomweb/studies", header: map[string]string{"X-Junk": strings.Repeat("j", 100<<10)}},
		{name: "bad transfer", method: "POST", path: "/api/v1/transfers", ct: "application/json", body: garbage(100)},
		{name: "oversized instance", method: "POST", path: "/dicomweb/studies", stow: []synth.Instance{huge}, oversized: true},
		{name: "oversized request", method: "POST", path: "/dicomweb/studies", ct: "multipart/related; type=\"application/dicom\"; boundary=x", body: garbage(maxRequestBytes + 1<<20), oversized: true},
	}
	c := newClient(60 * time.Second)
	api := s.d.hampshire.Client()
	api.HTTP = c
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for round := range 4 {
				for i, bc := range cases {
					if (i+w+round)%2 == 1 && bc.oversized {
						continue // fewer of the big ones
					}
					start := time.Now()
					var (
						status int
						ra     string
						err    error
					)
					if bc.stow != nil {
						var resp *client.StoreResponse
						resp, err = api.Store(context.WithoutCancel(ctx), "", cluster.Instances(bc.stow), nil)
						status, ra = storeStatus(resp, err)
					} else {
						status, ra, err = s.rawRequest(context.WithoutCancel(ctx), c, bc.method, base+bc.path, bc.ct, bc.body, bc.header)
					}
					// An oversized upload may be cut by the server after its
					// 413 (the client then sees a reset): not a hang.
					s.rec.observe("burst", start, status, ra, 0, err, bc.oversized)
					if status >= 200 && status < 300 && bc.name != "bad query" {
						s.rec.violation("burst %q accepted: HTTP %d", bc.name, status)
					}
				}
			}
		})
	}
	wg.Wait()
}
