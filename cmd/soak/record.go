package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Limits the gateways run with; the burst sends requests beyond them.
const (
	maxRequestBytes  = 48 << 20
	maxInstanceBytes = 24 << 20
)

// Status codes of a request that got no HTTP answer.
const (
	statusTimeout   = -1 // the client gave up: a hang
	statusTransport = 0  // connection refused/reset
)

// sample is one request's outcome.
type sample struct {
	at     time.Duration // since the start of the traffic
	op     string
	status int
	dur    time.Duration
	bytes  int64 // instance bytes stored (stow) or read (wado)
	phase  string
}

// recorder collects samples and violations; safe for concurrent use.
type recorder struct {
	start time.Time

	mu         sync.Mutex
	samples    []sample
	violations []string
	nViolation int
	phase      string
}

func newRecorder() *recorder { return &recorder{start: time.Now(), phase: "normal"} }

func (r *recorder) since() time.Duration { return time.Since(r.start) }

// stamp formats an offset as +mm:ss.mmm.
func stamp(d time.Duration) string {
	return fmt.Sprintf("+%02d:%06.3f", int(d.Minutes()), (d % time.Minute).Seconds())
}

// announce prints a timestamped line.
func (r *recorder) announce(format string, args ...any) {
	fmt.Printf("[%s] %s\n", stamp(r.since()), fmt.Sprintf(format, args...))
}

// setPhase names the fault in progress ("normal" when none).
func (r *recorder) setPhase(p string) {
	r.mu.Lock()
	r.phase = p
	r.mu.Unlock()
}

func (r *recorder) currentPhase() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.phase
}

// violation records a failure of the soak's promises.
func (r *recorder) violation(format string, args ...any) {
	msg := fmt.Sprintf("[%s] ", stamp(r.since())) + fmt.Sprintf(format, args...)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nViolation++
	if len(r.violations) < 100 {
		r.violations = append(r.violations, msg)
	}
	if r.nViolation <= 20 {
		fmt.Println("VIOLATION", msg)
	}
}

// statusOf classifies a client result.
func statusOf(resp *http.Response, err error) int {
	if err == nil {
		return resp.StatusCode
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return statusTimeout
	}
	if strings.Contains(err.Error(), "Client.Timeout") || errors.Is(err, errHang) {
		return statusTimeout
	}
	return statusTransport
}

var errHang = errors.New("request hung")

// observe records one request and checks the rules that hold for every
// answer: no 5xx but 503, every 503 with Retry-After, no hang; transport
// errors are violations unless allowTransport.
func (r *recorder) observe(op string, start time.Time, status int, retryAfter string, bytes int64, err error, allowTransport bool) {
	now := time.Now()
	r.mu.Lock()
	phase := r.phase
	r.samples = append(r.samples, sample{at: start.Sub(r.start), op: op, status: status, dur: now.Sub(start), bytes: bytes, phase: phase})
	r.mu.Unlock()
	switch {
	case status == statusTimeout:
		r.violation("%s hung (client timeout after %v) during %s: %v", op, now.Sub(start).Round(time.Millisecond), phase, err)
	case status == statusTransport && !allowTransport:
		r.violation("%s: no HTTP answer during %s: %v", op, phase, err)
	case status == http.StatusServiceUnavailable && retryAfter == "":
		r.violation("%s: 503 without Retry-After during %s", op, phase)
	case status >= 500 && status != http.StatusServiceUnavailable:
		r.violation("%s: HTTP %d during %s", op, status, phase)
	}
}

func statusName(s int) string {
	switch s {
	case statusTimeout:
		return "timeout"
	case statusTransport:
		return "no-answer"
	}
	return fmt.Sprint(s)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(float64(len(ds)-1) * p)
	return ds[i]
}

// report prints throughput per window, status counts by phase and
// operation, and latency percentiles of successful requests.
func (r *recorder) report(window time.Duration) {
	r.mu.Lock()
	samples := slices.Clone(r.samples)
	r.mu.Unlock()

	fmt.Printf("\n== throughput per %v window (successful requests; STOW instances and MB stored)\n", window)
	fmt.Printf("%-15s %8s %8s %9s %8s %8s %8s %10s\n", "window", "stow/s", "inst/s", "MB/s", "qido/s", "wado/s", "errors", "503s")
	type win struct {
		stow, qido, wado, errs, shed int
		mb                           float64
	}
	var wins []win
	for _, s := range samples {
		i := int(s.at / window)
		for len(wins) <= i {
			wins = append(wins, win{})
		}
		w := &wins[i]
		ok := s.status >= 200 && s.status < 300
		switch {
		case s.status == http.StatusServiceUnavailable:
			w.shed++
		case !ok && s.op != "burst":
			w.errs++
		}
		if !ok {
			continue
		}
		switch s.op {
		case "stow":
			w.stow++
			w.mb += float64(s.bytes) / 1e6
		case "qido":
			w.qido++
		case "wado":
			w.wado++
		}
	}
	instances := map[int]int{}
	r.mu.Lock()
	for _, s := range r.samples {
		if s.op == "stow-instances" {
			instances[int(s.at/window)] += int(s.bytes)
		}
	}
	r.mu.Unlock()
	sec := window.Seconds()
	for i, w := range wins {
		fmt.Printf("%-15s %8.1f %8.1f %9.2f %8.1f %8.1f %8d %10d\n",
			fmt.Sprintf("%s–%s", stamp(time.Duration(i) * window)[1:6], stamp(time.Duration(i+1) * window)[1:6]),
			float64(w.stow)/sec, float64(instances[i])/sec, w.mb/sec, float64(w.qido)/sec, float64(w.wado)/sec, w.errs, w.shed)
	}

	fmt.Println("\n== responses by phase, operation and status")
	counts := map[string]map[string]int{}
	var keys []string
	for _, s := range samples {
		if s.op == "stow-instances" {
			continue
		}
		k := fmt.Sprintf("%-12s %-6s", s.phase, s.op)
		if counts[k] == nil {
			counts[k] = map[string]int{}
			keys = append(keys, k)
		}
		counts[k][statusName(s.status)]++
	}
	sort.Strings(keys)
	for _, k := range keys {
		var parts []string
		var sts []string
		for st := range counts[k] {
			sts = append(sts, st)
		}
		sort.Strings(sts)
		for _, st := range sts {
			parts = append(parts, fmt.Sprintf("%s×%d", st, counts[k][st]))
		}
		fmt.Printf("  %s %s\n", k, strings.Join(parts, "  "))
	}

	fmt.Println("\n== latency of answered requests (all phases), by operation")
	fmt.Printf("  %-6s %8s %10s %10s %10s %10s\n", "op", "count", "p50", "p90", "p99", "max")
	byOp := map[string][]time.Duration{}
	for _, s := range samples {
		if s.op == "stow-instances" || s.status <= 0 {
			continue
		}
		byOp[s.op] = append(byOp[s.op], s.dur)
	}
	for _, op := range []string{"stow", "qido", "wado", "burst"} {
		ds := byOp[op]
		if len(ds) == 0 {
			continue
		}
		fmt.Printf("  %-6s %8d %10v %10v %10v %10v\n", op, len(ds), percentile(ds, 0.5).Round(time.Millisecond),
			percentile(ds, 0.9).Round(time.Millisecond), percentile(ds, 0.99).Round(time.Millisecond), percentile(ds, 1).Round(time.Millisecond))
	}
}

func execOutput(bin string, args ...string) (string, error) {
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}
