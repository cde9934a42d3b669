package main

import (
	"fmt"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/internal/cluster"
)

// memSample is one reading of a gateway process's memory.
type memSample struct {
	at  time.Duration
	pid int
	mem cluster.Memory
}

// memSampler reads VmRSS and VmHWM of each gateway every 2 s.
type memSampler struct {
	rec  *recorder
	gws  []*cluster.Gateway
	done chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	samples map[string][]memSample
}

func startMemSampler(rec *recorder, gws []*cluster.Gateway) *memSampler {
	m := &memSampler{rec: rec, gws: gws, done: make(chan struct{}), samples: map[string][]memSample{}}
	m.wg.Go(func() {
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			m.sample()
			select {
			case <-m.done:
				return
			case <-tick.C:
			}
		}
	})
	return m
}

func (m *memSampler) sample() {
	for _, g := range m.gws {
		p := g.Proc()
		if p == nil || p.Exited() {
			continue
		}
		mem, err := cluster.ProcMemory(p.Pid())
		if err != nil {
			continue
		}
		m.mu.Lock()
		m.samples[g.Name] = append(m.samples[g.Name], memSample{at: m.rec.since(), pid: p.Pid(), mem: mem})
		m.mu.Unlock()
	}
}

func (m *memSampler) stop() {
	close(m.done)
	m.wg.Wait()
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// report prints, per gateway, RSS at start, middle and end of the run and
// the peak (VmHWM) of each process it ran as; growth beyond a generous
// bound between the middle and the end of one process is a violation.
func (m *memSampler) report() {
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Println("\n== gateway memory (VmRSS sampled every 2 s; VmHWM = peak RSS of the process)")
	for _, g := range m.gws {
		ss := m.samples[g.Name]
		if len(ss) == 0 {
			continue
		}
		byPid := map[int][]memSample{}
		var pids []int
		for _, s := range ss {
			if _, ok := byPid[s.pid]; !ok {
				pids = append(pids, s.pid)
			}
			byPid[s.pid] = append(byPid[s.pid], s)
		}
		for _, pid := range pids {
			ps := byPid[pid]
			first, mid, last := ps[0], ps[len(ps)/2], ps[len(ps)-1]
			var peakRSS, hwm int64
			for _, s := range ps {
				peakRSS = max(peakRSS, s.mem.RSS)
				hwm = max(hwm, s.mem.HWM)
			}
			fmt.Printf("  %-9s pid %-7d %s–%s: RSS start %s (%s), middle %s (%s), end %s (%s); peak RSS sampled %s, VmHWM %s\n",
				g.Name, pid, stamp(first.at), stamp(last.at), mib(first.mem.RSS), stamp(first.at), mib(mid.mem.RSS), stamp(mid.at),
				mib(last.mem.RSS), stamp(last.at), mib(peakRSS), mib(hwm))
			if len(ps) >= 10 && last.mem.RSS > 2*mid.mem.RSS+256<<20 {
				m.rec.violation("%s (pid %d) RSS grew from %s in the middle to %s at the end", g.Name, pid, mib(mid.mem.RSS), mib(last.mem.RSS))
			}
		}
	}
}
