package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/internal/synth"
)

const mb = 1e6 // MB/s figures use 10^6 bytes, as go test -bench does

func sum(instances []synth.Instance) int64 {
	var n int64
	for _, in := range instances {
		n += in.Size()
	}
	return n
}

func (b *bench) alive(t *target) error {
	if t.startErr != nil {
		return fmt.Errorf("did not start: %w", t.startErr)
	}
	select {
	case <-t.done:
		return fmt.Errorf("process exited earlier (%v); log tail: %s", t.waitErr, t.logTail())
	default:
		return nil
	}
}

// ---- (a) and (b): STOW throughput ----

// stowRounds runs a STOW part: in each of -rounds rounds every target
// stores data(round), its own copy, one target after the other, in the
// order of the targets in odd rounds and the reverse in even ones, so that
// no target always goes first (a cold MinIO or page cache) or last. A
// row gives the median round (instances/s, MB/s), each round's rate, and
// the gateway's store stages over all its rounds; stored is told of each
// target's last stored copy. A target that fails a round is not run again.
func (b *bench) stowRounds(ctx context.Context, part string, data func(round int) []synth.Instance, stored func(*target, []synth.Instance), tab *table) *table {
	rounds := max(b.cfg.rounds, 1)
	runs := make([][]metrics, len(b.targets))
	stagesBefore := make([]stageSums, len(b.targets))
	for i, t := range b.targets {
		if t.name != targetOrthanc && b.alive(t) == nil {
			stagesBefore[i], _ = scrapeStages(ctx, b.client, t.root)
		}
	}
	for round := range rounds {
		ins := data(round)
		order := make([]int, len(b.targets))
		for i := range order {
			order[i] = i
		}
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, i := range order {
			t := b.targets[i]
			if k := len(runs[i]); k > 0 && runs[i][k-1].err != nil {
				continue
			}
			if ctx.Err() != nil {
				runs[i] = append(runs[i], failed(ctx.Err()))
				continue
			}
			logf("(%s) %s, round %d of %d …", part, t.name, round+1, rounds)
			m := b.stowOnce(ctx, t, ins)
			if m.err != nil {
				logf("(%s) %s: %v", part, t.name, m.err)
			} else if stored != nil {
				stored(t, ins)
			}
			runs[i] = append(runs[i], m)
		}
	}
	for i, t := range b.targets {
		m := medianRun(runs[i])
		if m.err == nil && stagesBefore[i] != nil {
			if after, err := scrapeStages(ctx, b.client, t.root); err == nil {
				m.s["stages"] = describeStages(stagesBefore[i], after)
			}
		}
		tab.rows = append(tab.rows, row{label: t.name, target: t.name, m: m})
	}
	if rounds > 1 {
		tab.notes = append(tab.notes, roundsNote(b.targets, runs))
	}
	return tab
}

// stowOnce stores instances on t and measures the rate.
func (b *bench) stowOnce(ctx context.Context, t *target, instances []synth.Instance) metrics {
	if err := b.alive(t); err != nil {
		return failed(err)
	}
	d, err := stowAll(ctx, b.client, t.root, instances, b.cfg.batch, b.cfg.conc)
	if err != nil {
		return failed(err)
	}
	bytes := sum(instances)
	m := newMetrics()
	m.v["n"] = float64(len(instances))
	m.v["mb"] = float64(bytes) / mb
	m.v["sec"] = d.Seconds()
	m.v["ips"] = float64(len(instances)) / d.Seconds()
	m.v["mbps"] = float64(bytes) / mb / d.Seconds()
	return m
}

// medianRun is the round of runs with the median rate (the lower middle
// one of an even count), carrying each round's rate in its "rounds" cell;
// the first failure if any round failed.
func medianRun(runs []metrics) metrics {
	if len(runs) == 0 {
		return failed(errors.New("not run"))
	}
	var rates []string
	for _, m := range runs {
		if m.err != nil {
			return m
		}
		rates = append(rates, fmtNum(m.v["ips"], 1))
	}
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(x, y metrics) int { return cmp.Compare(x.v["ips"], y.v["ips"]) })
	m := sorted[(len(sorted)-1)/2]
	m.s["rounds"] = strings.Join(rates, " · ")
	return m
}

// roundsNote gives, for each gateway target, its instances/s divided by
// Orthanc's in the same round: the targets of one round run seconds apart,
// so on a machine whose speed drifts such pairs compare better than the
// medians of all rounds do.
func roundsNote(targets []*target, runs [][]metrics) string {
	oi := slices.IndexFunc(targets, func(t *target) bool { return t.name == targetOrthanc })
	if oi < 0 {
		return "Rounds: the row's figures are those of its median round (instances/s); the rounds column lists every round's."
	}
	var per []string
	for i, t := range targets {
		if i == oi {
			continue
		}
		var ratios []float64
		for r := range min(len(runs[i]), len(runs[oi])) {
			g, o := runs[i][r], runs[oi][r]
			if g.err != nil || o.err != nil || o.v["ips"] == 0 {
				break
			}
			ratios = append(ratios, g.v["ips"]/o.v["ips"])
		}
		if len(ratios) == 0 {
			continue
		}
		per = append(per, t.name+" "+withMedian(ratios, "%.2f"))
	}
	return "Rounds: the row's figures are those of its median round (instances/s); the rounds column lists every round's. " +
		"Gateway ÷ orthanc instances/s round by round: " + strings.Join(per, "; ") + "."
}

// withMedian lists v in order, each with format, and then their median:
// "1.50, 1.72, 1.68 (median 1.68)".
func withMedian(v []float64, format string) string {
	cells := make([]string, len(v))
	for i, x := range v {
		cells[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(cells, ", ") + " (median " + fmt.Sprintf(format, median(v)) + ")"
}

var stowCols = []column{
	{"n", "instances", 0, false}, {"mb", "MB", 1, false}, {"sec", "seconds", 2, false},
	{"ips", "instances/s", 1, true}, {"mbps", "MB/s", 1, true},
	{"rounds", "instances/s of each round", 0, false},
	{"stages", "gateway: mean ms per stage (audit: per request)", 0, false},
}

// setSmall notes the series of (a) that (e) reads metadata from.
func (b *bench) setSmall(t *target, ins []synth.Instance) {
	t.smallStudy, t.smallSeries = ins[0].StudyInstanceUID, ins[0].SeriesInstanceUID
}

func (b *bench) setCT(t *target, ins []synth.Instance) {
	t.ctStudy, t.ctSeries = ins[0].StudyInstanceUID, ins[0].SeriesInstanceUID
	t.ctInstances = nil
	for _, in := range ins {
		t.ctInstances = append(t.ctInstances, in.SOPInstanceUID)
	}
	t.ctBytes = sum(ins)
}

// ---- (c): peak RSS while one big instance streams in ----

func (b *bench) partC(ctx context.Context, t *target) metrics {
	if err := b.alive(t); err != nil {
		return failed(err)
	}
	pid := t.pid()
	in := bigInstance(b.cfg.bigFrames)
	m := newMetrics()
	m.v["gib"] = float64(in.Size()) / (1 << 30)
	base, _, err := procStatus(pid)
	if err != nil {
		return failed(err)
	}
	m.v["base"] = float64(base) / (1 << 20)
	hwmNote := ""
	if err := resetHWM(pid); err != nil {
		hwmNote = " (VmHWM not reset: " + err.Error() + ")"
	}

	rctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	var (
		wg      sync.WaitGroup
		peak    int64
		capped  bool
		stopped = make(chan struct{})
	)
	wg.Add(1)
	go func() { // samples VmRSS every 20 ms; aborts the upload over the cap
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, _, err := procStatus(pid); err == nil {
				peak = max(peak, rss)
				if b.cfg.rssCap > 0 && rss > b.cfg.rssCap {
					capped = true
					cancel()
				}
			}
			select {
			case <-stopped:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	err = stow(rctx, b.client, t.root, []synth.Instance{in})
	d := time.Since(start)
	close(stopped)
	wg.Wait()
	_, hwm, herr := procStatus(pid)

	m.v["sec"] = d.Seconds()
	m.v["sampled"] = float64(peak) / (1 << 20)
	if herr == nil {
		m.v["hwm"] = float64(hwm) / (1 << 20)
		m.v["growth"] = float64(max(hwm-base, 0)) / (1 << 20)
	}
	switch {
	case capped:
		m.s["outcome"] = fmt.Sprintf("aborted by the bench: RSS passed the -rss-cap of %d MiB after %.1f s", b.cfg.rssCap>>20, d.Seconds())
	case err != nil:
		if herr != nil {
			err = fmt.Errorf("%w; the process is gone (%v)", err, herr)
		}
		m.s["outcome"] = "failed: " + err.Error()
	default:
		m.s["outcome"] = "stored (200)"
		m.v["mbps"] = float64(in.Size()) / mb / d.Seconds()
	}
	m.s["outcome"] += hwmNote
	return m
}

var bigCols = []column{
	{"gib", "instance GiB", 2, false}, {"base", "RSS before MiB", 0, false},
	{"hwm", "peak RSS (VmHWM) MiB", 0, true}, {"growth", "peak − before MiB", 0, false},
	{"sampled", "peak sampled VmRSS MiB", 0, false},
	{"sec", "seconds", 1, false}, {"mbps", "MB/s", 1, false}, {"outcome", "outcome", 0, false},
}

// ---- (e): WADO ----

const (
	acceptDicom  = `multipart/related; type="application/dicom"`
	acceptFrames = `multipart/related; type="application/octet-stream"`
	acceptJSON   = `application/dicom+json`
)

// ensureWADOData stores (untimed) the data sets (e) reads when (a) or (b)
// did not run or failed.
func (b *bench) ensureWADOData(ctx context.Context, t *target) error {
	if t.smallSeries == "" {
		ins := smallInstances(b.cfg.smallN, 0)
		if _, err := stowAll(ctx, b.client, t.root, ins, max(b.cfg.batch, 10), b.cfg.conc); err != nil {
			return fmt.Errorf("storing the %d-instance series: %w", len(ins), err)
		}
		t.smallStudy, t.smallSeries = ins[0].StudyInstanceUID, ins[0].SeriesInstanceUID
	}
	if t.ctStudy == "" {
		ins := ctInstances(b.cfg.ctN, 0)
		if _, err := stowAll(ctx, b.client, t.root, ins, max(b.cfg.batch, 10), b.cfg.conc); err != nil {
			return fmt.Errorf("storing the CT study: %w", err)
		}
		b.setCT(t, ins)
	}
	return nil
}

func (b *bench) partE(ctx context.Context, t *target) metrics {
	if err := b.alive(t); err != nil {
		return failed(err)
	}
	if err := b.ensureWADOData(ctx, t); err != nil {
		return failed(err)
	}
	m := newMetrics()
	var errs []error

	// Whole-study retrieve, median of reps.
	studyURL := t.root + "/studies/" + t.ctStudy
	var rates []float64
	for range b.cfg.retrieveReps {
		n, _, d, err := get(ctx, b.client, studyURL, acceptDicom, false)
		if err == nil && n < t.ctBytes {
			err = fmt.Errorf("study retrieve returned %d bytes, the study holds %d", n, t.ctBytes)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("study retrieve: %w", err))
			break
		}
		rates = append(rates, float64(n)/mb/d.Seconds())
	}
	if len(rates) == b.cfg.retrieveReps {
		m.v["retrieve"] = median(rates)
	}

	// Series metadata: one cold request, then reps warm ones.
	metaURL := t.root + "/studies/" + t.smallStudy + "/series/" + t.smallSeries + "/metadata"
	_, body, d, err := get(ctx, b.client, metaURL, acceptJSON, true)
	if err == nil {
		var n int
		if n, err = jsonArrayLen(body); err == nil && n != b.cfg.smallN {
			err = fmt.Errorf("series metadata has %d instances, want %d", n, b.cfg.smallN)
		}
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("series metadata: %w", err))
	} else {
		m.v["metaCold"] = ms(d)
		var ds []time.Duration
		for range b.cfg.metaReps {
			_, _, d, err := get(ctx, b.client, metaURL, acceptJSON, false)
			if err != nil {
				errs = append(errs, fmt.Errorf("series metadata: %w", err))
				break
			}
			ds = append(ds, d)
		}
		if len(ds) == b.cfg.metaReps {
			m.v["metaP50"], m.v["metaP99"] = ms(percentile(ds, 50)), ms(percentile(ds, 99))
		}
		// The same with Accept-Encoding: gzip, as browsers send it (the
		// compressed body is read, not inflated: that is the client's cost).
		ds = ds[:0]
		var size int64
		for range b.cfg.metaReps {
			n, _, d, err := get(ctx, b.client, metaURL, acceptJSON, false, "Accept-Encoding", "gzip")
			if err != nil {
				errs = append(errs, fmt.Errorf("series metadata, gzip: %w", err))
				break
			}
			ds, size = append(ds, d), n
		}
		if len(ds) == b.cfg.metaReps {
			m.v["metaGzP50"], m.v["metaGzKB"] = ms(percentile(ds, 50)), float64(size)/1024
		}
	}

	// Single frames of random CT instances (same sequence on every target).
	rng := rand.New(rand.NewPCG(b.cfg.seed, 5))
	var ds []time.Duration
	for range b.cfg.frames {
		sop := t.ctInstances[rng.IntN(len(t.ctInstances))]
		u := t.root + "/studies/" + t.ctStudy + "/series/" + t.ctSeries + "/instances/" + sop + "/frames/1"
		n, _, d, err := get(ctx, b.client, u, acceptFrames, false)
		if err == nil && n < 512*512*2 {
			err = fmt.Errorf("frame of %d bytes, want at least %d", n, 512*512*2)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("frame: %w", err))
			break
		}
		ds = append(ds, d)
	}
	if len(ds) == b.cfg.frames {
		m.v["frameP50"], m.v["frameP99"] = ms(percentile(ds, 50)), ms(percentile(ds, 99))
	}
	if len(errs) > 0 {
		m.s["errors"] = errors.Join(errs...).Error()
		if len(m.v) == 0 {
			return failed(errors.Join(errs...))
		}
	}
	return m
}

var wadoCols = []column{
	{"retrieve", "study retrieve MB/s", 1, true},
	{"metaCold", "series metadata cold ms", 1, false},
	{"metaP50", "series metadata p50 ms", 1, true}, {"metaP99", "series metadata p99 ms", 1, false},
	{"metaGzP50", "series metadata gzip p50 ms", 1, true}, {"metaGzKB", "gzip body KiB", 0, false},
	{"frameP50", "frame p50 ms", 2, true}, {"frameP99", "frame p99 ms", 2, true},
	{"errors", "errors", 0, false},
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	for i := range s { // insertion sort: a handful of values
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s[len(s)/2]
}

// ---- (d): QIDO ----

type query struct{ kind, params string }

var queryKinds = []string{"PatientID exact", "PatientName prefix", "StudyDate range", "ModalitiesInStudy", "AccessionNumber"}

// qidoQueries makes the same perKind queries of each kind for every
// target, on values that exist among the first n studies.
func qidoQueries(n, perKind int, seed uint64) []query {
	rng := rand.New(rand.NewPCG(seed, 4))
	surnames := synth.Surnames()
	var qs []query
	for _, kind := range queryKinds {
		for i := range perKind {
			k := rng.IntN(n)
			v := url.Values{"limit": {"100"}}
			switch kind {
			case "PatientID exact":
				v.Set("PatientID", qidoPatient(k).ID)
			case "PatientName prefix":
				s := surnames[rng.IntN(len(surnames))]
				if i%4 == 0 {
					s = "Smith"
				}
				r := []rune(s)
				v.Set("PatientName", string(r[:min(3, len(r))])+"*")
			case "StudyDate range":
				from := qidoEpoch.AddDate(0, 0, rng.IntN(qidoDays))
				v.Set("StudyDate", from.Format("20060102")+"-"+from.AddDate(0, 0, 30).Format("20060102"))
			case "ModalitiesInStudy":
				v.Set("ModalitiesInStudy", qidoModalities[rng.IntN(len(qidoModalities))])
			case "AccessionNumber":
				v.Set("AccessionNumber", qidoAccession(k))
			}
			// '*' stays literal, as browsers' encodeURIComponent leaves it:
			// Orthanc takes a percent-encoded %2A for a literal asterisk.
			qs = append(qs, query{kind, strings.ReplaceAll(v.Encode(), "%2A", "*")})
		}
	}
	return qs
}

// qidoRun runs qs one at a time (latency, not throughput) and returns the
// latency and result count of each, or the first error. Each kind of query
// runs for at most -query-time (at least 10 queries); those not run get
// count -1.
func (b *bench) qidoRun(ctx context.Context, t *target, qs []query) ([]time.Duration, []int, error) {
	// Warm-up, not timed: connections, caches, first-query costs.
	for _, q := range qs[:min(5, len(qs))] {
		if _, _, _, err := get(ctx, b.client, t.root+"/studies?"+q.params, acceptJSON, false); err != nil {
			return nil, nil, err
		}
	}
	ds := make([]time.Duration, len(qs))
	counts := make([]int, len(qs))
	spent, ran := map[string]time.Duration{}, map[string]int{}
	for i, q := range qs {
		if spent[q.kind] > b.cfg.queryTime && ran[q.kind] >= 10 {
			counts[i] = -1
			continue
		}
		_, body, d, err := get(ctx, b.client, t.root+"/studies?"+q.params, acceptJSON, true)
		if err == nil {
			counts[i], err = jsonArrayLen(body)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s (%s): %w", q.kind, q.params, err)
		}
		ds[i] = d
		spent[q.kind] += d
		ran[q.kind]++
	}
	return ds, counts, nil
}

var qidoCols = []column{
	{"ran", "queries", 0, false}, {"p50", "p50 ms", 2, true}, {"p99", "p99 ms", 2, true}, {"results", "mean results", 1, false},
	{"mismatch", "queries whose count differs from orthanc", 0, false},
}

var loadCols = []column{
	{"probe", "probe studies/s", 1, false}, {"n", "studies loaded", 0, false},
	{"sec", "load seconds", 1, false}, {"rate", "studies/s", 1, true},
}
