package main

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"
)

// partD loads the QIDO data set into every target and times the queries.
// Loading: first -qido-probe studies into each target, to measure its rate;
// then N is the largest count (at most -qido-studies) for which loading all
// targets fits -qido-budget at those rates, the same N for every target.
// Returns the load table, then the query table.
func (b *bench) partD(ctx context.Context) []*table {
	load := &table{cols: loadCols}
	qt := &table{cols: qidoCols}
	probe := min(b.cfg.qidoProbe, b.cfg.qidoMax)
	rates := map[*target]float64{}
	loadTime := map[*target]time.Duration{}
	errs := map[*target]error{}
	began := time.Now()
	for _, t := range b.targets {
		if err := b.alive(t); err != nil {
			errs[t] = err
			continue
		}
		logf("(d) %s: probe load of %d studies", t.name, probe)
		d, err := stowAll(ctx, b.client, t.root, qidoInstances(0, probe), b.cfg.loadBatch, b.cfg.conc)
		if err != nil {
			errs[t] = fmt.Errorf("loading: %w", err)
			continue
		}
		rates[t], loadTime[t] = float64(probe)/d.Seconds(), d
		logf("(d) %s: %.1f studies/s", t.name, rates[t])
	}
	var perStudy float64 // seconds to load one study into every target
	for _, r := range rates {
		perStudy += 1 / r
	}
	plan := probe
	if perStudy > 0 {
		plan = max(probe, min(int(b.cfg.qidoBudget.Seconds()/perStudy), b.cfg.qidoMax))
	}
	// Rates fall as the stores grow and the machine's load moves, so the
	// plan is an upper bound: the rest loads in rounds, one chunk into every
	// target in turn, and stops before a round that would end past the
	// budget. Every target gets the same N.
	chunk := min(max((plan-probe)/10, 500), 5000)
	logf("(d) probe rates give %d studies for the %s budget (%.2f ms per study over all targets); loading in rounds of %d",
		plan, b.cfg.qidoBudget, perStudy*1e3, chunk)
	n := probe
	var lastRound time.Duration
	for n < plan && ctx.Err() == nil {
		to := min(n+chunk, plan)
		if time.Since(began)+lastRound*time.Duration(to-n)/time.Duration(chunk) > b.cfg.qidoBudget {
			logf("(d) stopping at %d studies: another round would pass the budget", n)
			break
		}
		roundStart := time.Now()
		for _, t := range b.targets {
			if errs[t] != nil {
				continue
			}
			d, err := stowAll(ctx, b.client, t.root, qidoInstances(n, to), b.cfg.loadBatch, b.cfg.conc)
			if err != nil {
				errs[t] = fmt.Errorf("loading studies %d–%d: %w", n, to, err)
				continue
			}
			loadTime[t] += d
			logf("(d) %s: %d studies (%.1f/s)", t.name, to, float64(to)/loadTime[t].Seconds())
		}
		lastRound = time.Since(roundStart)
		n = to
	}
	if ctx.Err() != nil {
		return []*table{load, qt} // titles empty: the run is ending
	}
	for _, t := range b.targets {
		if errs[t] != nil {
			load.rows = append(load.rows, row{label: t.name, target: t.name, m: failed(errs[t])})
			continue
		}
		m := newMetrics()
		m.v["probe"], m.v["n"] = rates[t], float64(n)
		m.v["sec"], m.v["rate"] = loadTime[t].Seconds(), float64(n)/loadTime[t].Seconds()
		load.rows = append(load.rows, row{label: t.name, target: t.name, m: m})
	}
	load.title = fmt.Sprintf("(d) QIDO-RS data set: %d studies (one 8x8 instance each, %d per STOW request, %d concurrent), loaded into every target",
		n, b.cfg.loadBatch, b.cfg.conc)
	load.notes = append(load.notes, fmt.Sprintf("N: the first %d studies measure each target's rate; the rest load in rounds (one chunk into every target in turn) until a further round would take loading past %s in total (at most -qido-studies %d). "+
		"Every target also holds the studies of (a)–(c), dated 1999 with their own patients.", probe, b.cfg.qidoBudget, b.cfg.qidoMax))

	qs := qidoQueries(n, b.cfg.queries, b.cfg.seed)
	type result struct {
		ds     []time.Duration
		counts []int
	}
	res := map[*target]result{}
	var orthanc *result
	for _, t := range b.targets {
		if errs[t] != nil {
			continue
		}
		logf("(d) %s: %d queries", t.name, len(qs))
		ds, counts, err := b.qidoRun(ctx, t, qs)
		if err != nil {
			errs[t] = err
			continue
		}
		res[t] = result{ds, counts}
		if t.name == targetOrthanc {
			r := res[t]
			orthanc = &r
		}
	}
	var examples []string
	for _, t := range b.targets {
		for _, kind := range queryKinds {
			label := t.name + " · " + kind
			if errs[t] != nil {
				qt.rows = append(qt.rows, row{label: label, target: t.name, group: kind, m: failed(errs[t])})
				continue
			}
			r := res[t]
			var ds []time.Duration
			total, mismatch := 0, 0
			for i, q := range qs {
				if q.kind != kind || r.counts[i] < 0 {
					continue
				}
				ds = append(ds, r.ds[i])
				total += r.counts[i]
				if orthanc != nil && orthanc.counts[i] >= 0 && orthanc.counts[i] != r.counts[i] {
					mismatch++
					if mismatch <= 3 {
						examples = append(examples, fmt.Sprintf("`%s`: %s %d, orthanc %d", q.params, t.name, r.counts[i], orthanc.counts[i]))
					}
				}
			}
			m := newMetrics()
			m.v["p50"], m.v["p99"] = ms(percentile(ds, 50)), ms(percentile(ds, 99))
			m.v["ran"] = float64(len(ds))
			m.v["results"] = float64(total) / float64(len(ds))
			if orthanc != nil {
				m.v["mismatch"] = float64(mismatch)
			} else {
				m.v["mismatch"] = math.NaN()
			}
			qt.rows = append(qt.rows, row{label: label, target: t.name, group: kind, m: m})
		}
	}
	if len(examples) > 0 {
		qt.notes = append(qt.notes, "Result counts that differ from orthanc's (first 3 per row): "+strings.Join(examples, "; ")+".")
	}
	qt.title = fmt.Sprintf("(d) QIDO-RS /studies latency on %d studies: %d queries of each kind, one at a time, limit=100", n, b.cfg.queries)
	qt.notes = append(qt.notes, "Queries: PatientID=<an existing patient> (2 studies each on average); PatientName=<3-letter prefix of a generated surname>* (a quarter of them Smi*); "+
		"StudyDate=<30-day range in 2010–2024>; ModalitiesInStudy=<one of 10>; AccessionNumber=<an existing one>. "+
		"The same queries in the same order on every target, after 5 untimed warm-up queries; "+
		fmt.Sprintf("each kind stops after %s of query time (at least 10 queries), so a slow kind has fewer samples and its p99 is rougher. ", b.cfg.queryTime)+
		"Count mismatches compare only queries run on both. "+
		"Orthanc: DICOMweb plugin defaults (QidoCaseSensitive true; the names queried are capitalised as stored).")
	return []*table{load, qt}
}
