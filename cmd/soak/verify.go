package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/internal/cluster"
)

// verify waits for the forwarding to finish and checks the promises: every
// acknowledged instance at hampshire and at surrey byte-identical, every
// instance of hampshire at surrey exactly once, no failed transfer, both
// audit chains intact.
func (s *soak) verify(ctx context.Context) {
	h, sr := s.d.hampshire, s.d.surrey
	httpc := &http.Client{Timeout: 2 * time.Minute}
	hc, sc := h.Client(), sr.Client()
	hc.HTTP, sc.HTTP = httpc, httpc
	for _, g := range []*cluster.Gateway{h, sr} {
		if err := g.WaitReady(ctx, time.Minute); err != nil {
			s.rec.violation("%s not ready after the traffic: %v", g.Name, err)
			return
		}
	}

	// Forwarding: wait until no transfer is queued or running.
	s.rec.announce("waiting for hampshire's transfers to finish")
	deadline := time.Now().Add(max(3*time.Minute, s.o.duration/2))
	var lastReport time.Time
	for {
		pending := 0
		for _, st := range []string{"queued", "running"} {
			ts, err := hc.ListTransfers(ctx, client.TransferQuery{State: st, Limit: 10000})
			if err != nil {
				s.rec.violation("list transfers: %v", err)
				return
			}
			pending += len(ts)
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			s.rec.violation("%d transfers still queued or running %v after the traffic stopped", pending, time.Since(deadline.Add(-max(3*time.Minute, s.o.duration/2))).Round(time.Second))
			ts, _ := hc.ListTransfers(ctx, client.TransferQuery{State: "running", Limit: 10000})
			for i, t := range ts {
				if i < 5 {
					s.rec.violation("  stuck: transfer %s of study %s, %d/%d sent, attempts %d, updated %s, last error %q",
						t.ID, t.StudyUID, t.InstancesSent, t.InstancesTotal, t.Attempts, t.UpdatedAt, t.LastError)
				}
			}
			break
		}
		if time.Since(lastReport) > 10*time.Second {
			s.rec.announce("  %d transfers queued or running", pending)
			lastReport = time.Now()
		}
		if !sleep(ctx, time.Second) {
			return
		}
	}
	for _, st := range []string{"failed", "cancelled"} {
		ts, err := hc.ListTransfers(ctx, client.TransferQuery{State: st, Limit: 10000})
		if err != nil {
			s.rec.violation("list transfers: %v", err)
			return
		}
		for i, t := range ts {
			if i < 5 {
				s.rec.violation("transfer %s of study %s %s: %s", t.ID, t.StudyUID, t.State, t.LastError)
			}
		}
		if len(ts) > 5 {
			s.rec.violation("... and %d more transfers %s", len(ts)-5, st)
		}
	}
	completed, _ := hc.ListTransfers(ctx, client.TransferQuery{State: "completed", Limit: 10000})
	s.rec.announce("transfers completed: %d", len(completed))

	// Every instance, at both ends.
	hInst, err := allInstances(ctx, hc)
	if err != nil {
		s.rec.violation("list hampshire's instances: %v", err)
		return
	}
	sInst, err := allInstances(ctx, sc)
	if err != nil {
		s.rec.violation("list surrey's instances: %v", err)
		return
	}
	s.rec.announce("hampshire lists %d instances, surrey %d; %d acknowledged by STOW-RS", len(hInst), len(sInst), len(s.acked))
	for name, list := range map[string][]instanceRef{"hampshire": hInst, "surrey": sInst} {
		seen := map[string]bool{}
		for _, in := range list {
			if seen[in.sop] {
				s.rec.violation("%s lists instance %s twice", name, in.sop)
			}
			seen[in.sop] = true
		}
	}
	studies := map[string]bool{}
	for _, in := range hInst {
		studies[in.study] = true
	}
	for _, a := range s.acked {
		studies[a.study] = true
	}
	inSurrey := map[string]string{}
	for _, in := range sInst {
		inSurrey[in.sop] = in.study
		if !studies[in.study] {
			s.rec.violation("surrey holds instance %s of study %s that hampshire does not", in.sop, in.study)
		}
	}

	// SHA-256 of the stored bytes (recomputed from storage), study by study.
	var order []string
	for st := range studies {
		order = append(order, st)
	}
	sort.Strings(order)
	type sums struct{ h, s map[string]string }
	results := make(map[string]sums, len(order))
	var mu sync.Mutex
	work := make(chan string)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for st := range work {
				hs, err1 := hc.StudySHA256(ctx, st, true)
				ss, err2 := sc.StudySHA256(ctx, st, true)
				if err1 != nil {
					s.rec.violation("hampshire sha256 of study %s: %v", st, err1)
				}
				if err2 != nil {
					s.rec.violation("surrey sha256 of study %s: %v", st, err2)
				}
				mu.Lock()
				results[st] = sums{hs, ss}
				mu.Unlock()
			}
		})
	}
	for _, st := range order {
		work <- st
	}
	close(work)
	wg.Wait()

	missingH, missingS, differ, extra := 0, 0, 0, 0
	checked := 0
	for st, r := range results {
		for sop, hsum := range r.h {
			ssum, ok := r.s[sop]
			switch {
			case !ok:
				missingS++
				if missingS <= 5 {
					s.rec.violation("instance %s (study %s) is at hampshire but never reached surrey", sop, st)
				}
			case ssum != hsum:
				differ++
				s.rec.violation("instance %s differs at surrey: %s, hampshire %s", sop, ssum, hsum)
			}
		}
		for sop := range r.s {
			if _, ok := r.h[sop]; !ok {
				extra++
				s.rec.violation("surrey holds %s which hampshire does not", sop)
			}
		}
	}
	for sop, a := range s.acked {
		r := results[a.study]
		switch got, ok := r.h[sop]; {
		case !ok:
			missingH++
			if missingH <= 5 {
				s.rec.violation("acknowledged instance %s is not at hampshire", sop)
			}
		case got != a.sha:
			s.rec.violation("acknowledged instance %s altered at hampshire: %s, sent %s", sop, got, a.sha)
		default:
			checked++
		}
		if got, ok := r.s[sop]; ok && got != a.sha {
			s.rec.violation("acknowledged instance %s altered at surrey: %s, sent %s", sop, got, a.sha)
		}
	}
	if missingS > 5 {
		s.rec.violation("%d instances in all never reached surrey", missingS)
	}
	if missingH > 5 {
		s.rec.violation("%d acknowledged instances in all are not at hampshire", missingH)
	}
	if len(sInst) != len(hInst) {
		s.rec.violation("surrey lists %d instances, hampshire %d", len(sInst), len(hInst))
	}
	s.rec.announce("verified %d acknowledged instances byte-identical at hampshire; %d of %d studies compared with surrey (missing at surrey %d, differing %d, extra %d)",
		checked, len(results), len(order), missingS, differ, extra)

	for _, g := range []struct {
		name string
		api  *client.Client
	}{{h.Name, hc}, {sr.Name, sc}} {
		res, err := g.api.AuditVerify(ctx)
		switch {
		case err != nil:
			s.rec.violation("%s audit verify: %v", g.name, err)
		case !res.OK:
			s.rec.violation("%s audit chain broken after %d records: %s %s", g.name, res.Records, res.FirstBroken, res.Reason)
		default:
			s.rec.announce("%s audit chain verifies: %d records", g.name, res.Records)
		}
	}
}

type instanceRef struct{ study, sop string }

// allInstances pages through QIDO-RS /instances.
func allInstances(ctx context.Context, api *client.Client) ([]instanceRef, error) {
	const page = 5000
	var out []instanceRef
	for offset := 0; ; offset += page {
		items, err := api.Search(ctx, "/instances", url.Values{"limit": {fmt.Sprint(page)}, "offset": {fmt.Sprint(offset)}})
		if err != nil {
			return nil, fmt.Errorf("QIDO /instances offset %d: %w", offset, err)
		}
		for _, it := range items {
			out = append(out, instanceRef{study: it.Str("0020000D"), sop: it.Str("00080018")})
		}
		if len(items) < page {
			return out, nil
		}
	}
}
