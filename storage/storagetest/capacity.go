package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
	"github.com/dicom-gateway/gateway/storage/filesystem"
	"github.com/dicom-gateway/gateway/storage/internal/recordcodec"
)

// The capacity benchmark answers "how many instances fit": it loads
// generated CT instance records straight into an index (no STOW, no blobs),
// as ingest would write them, and reports the index's memory per instance
// and the latency of the usual QIDO-RS searches at that size.

// envInt is the positive integer in the environment variable name, else def.
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// CapacityInstances is GATEWAY_BENCH_INSTANCES, default 10,000: how many
// instance records BenchCapacity loads.
func CapacityInstances() int { return envInt("GATEWAY_BENCH_INSTANCES", 10_000) }

// capacityTemplateFile is the corpus file whose real CT header every
// generated record copies: GATEWAY_BENCH_TEMPLATE, default a GE CT (NEMA
// WG04 CT1, 256 attributes, private groups included).
func capacityTemplateFile() string {
	if f := os.Getenv("GATEWAY_BENCH_TEMPLATE"); f != "" {
		return f
	}
	return "ct_implicit_le_ge_512.dcm"
}

// capacityTemplate is the whole record ingest builds for the template file
// (DescribeBlob on a filesystem store holding it).
func capacityTemplate(tb testing.TB) *gateway.InstanceRecord {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(testcorpus.Dir(tb), filepath.Base(capacityTemplateFile())))
	if err != nil {
		tb.Fatal(err)
	}
	h, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{})
	if err != nil {
		tb.Fatal(err)
	}
	blobs, err := filesystem.New(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	key := gateway.InstanceKey(h.StudyInstanceUID, h.SeriesInstanceUID, h.SOPInstanceUID)
	if _, err := blobs.Put(tb.Context(), key, bytes.NewReader(data)); err != nil {
		tb.Fatal(err)
	}
	info, err := blobs.Stat(tb.Context(), key)
	if err != nil {
		tb.Fatal(err)
	}
	rec, err := gateway.DescribeBlob(tb.Context(), blobs, info, dicomcodec.HeaderLimits{})
	if err != nil {
		tb.Fatal(err)
	}
	return rec
}

// capacityShape is how generated instances group: CT studies of 2 series of
// 100 slices (GATEWAY_BENCH_SERIES_SIZE changes the slices per series).
type capacityShape struct{ seriesPerStudy, perSeries int }

func (s capacityShape) perStudy() int { return s.seriesPerStudy * s.perSeries }

// capacityUID is a fresh UID of realistic length (48–52 characters, like a
// scanner's) for study s, series e, instance i.
func capacityUID(parts ...int) string {
	var b strings.Builder
	b.WriteString("1.2.826.0.1.3680043.10.1466.77.20261205")
	for _, p := range parts {
		b.WriteByte('.')
		b.WriteString(strconv.Itoa(p + 1))
	}
	return b.String()
}

// capacityRecord is instance i of the generated set: the template's header
// with fresh UIDs, a patient shared by a few studies, a date over 25 years,
// a varied modality, and its own digest; lean, as ingest hands it to the
// index (gateway.IndexRecord), unless GATEWAY_BENCH_WHOLE_RECORDS is set
// (to measure what keeping whole headers in the index would cost).
func capacityRecord(tmpl *gateway.InstanceRecord, shape capacityShape, studies, i int) *gateway.InstanceRecord {
	s, within := i/shape.perStudy(), i%shape.perStudy()
	e, n := within/shape.perSeries, within%shape.perSeries
	r := rand.New(rand.NewPCG(uint64(s), 99))
	patient := r.IntN(studies*2/3 + 1)
	name := benchFamily[patient%len(benchFamily)] + "^" + benchGiven[(patient/len(benchFamily))%len(benchGiven)]
	date := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, r.IntN(25*365)).Format("20060102")
	modality := benchModalities[r.IntN(len(benchModalities))]
	study, series, sop := capacityUID(s), capacityUID(s, e), capacityUID(s, e, n)
	md := maps.Clone(tmpl.Metadata)
	set := func(tag, vr string, v any) { md[tag] = dicomcodec.Attribute{VR: vr, Value: []any{v}} }
	set(dicomcodec.TagStudyInstanceUID, "UI", study)
	set(dicomcodec.TagSeriesInstanceUID, "UI", series)
	set(dicomcodec.TagSOPInstanceUID, "UI", sop)
	set(dicomcodec.TagPatientName, "PN", dicomcodec.PersonName{Alphabetic: name})
	set(dicomcodec.TagPatientID, "LO", fmt.Sprintf("PID%07d", patient))
	set(dicomcodec.TagStudyDate, "DA", date)
	set(dicomcodec.TagAccessionNumber, "SH", fmt.Sprintf("ACC%08d", s+1))
	set(dicomcodec.TagModality, "CS", modality)
	set(dicomcodec.TagSeriesNumber, "IS", int64(e+1))
	set(dicomcodec.TagInstanceNumber, "IS", int64(n+1))
	rec := *tmpl
	rec.StudyInstanceUID, rec.SeriesInstanceUID, rec.SOPInstanceUID = study, series, sop
	sum := sha256.Sum256([]byte(sop))
	rec.SHA256 = hex.EncodeToString(sum[:])
	rec.Metadata = md
	if os.Getenv("GATEWAY_BENCH_WHOLE_RECORDS") != "" {
		return &rec
	}
	return gateway.IndexRecord(&rec)
}

// BenchCapacity loads CapacityInstances() generated CT records into x, a
// fresh index, in batches of 1,000 (through BulkPutter when x has it), and
// reports memory per instance — memory returns the backend's used bytes
// (Redis INFO memory used_memory, a bbolt file's size), read before and after
// the load — and p50/p99 of the usual QIDO-RS searches
// (GATEWAY_BENCH_QUERIES of each, default 200): patient ID, patient name
// prefix, fuzzy name, a one-month date range, a modality, then a patient's
// studies → a study's series → a series' instances.
func BenchCapacity(b *testing.B, x gateway.Index, memory func(context.Context) (int64, error)) {
	ctx := b.Context()
	tmpl := capacityTemplate(b)
	n := CapacityInstances()
	shape := capacityShape{seriesPerStudy: 2, perSeries: envInt("GATEWAY_BENCH_SERIES_SIZE", 100)}
	studies := (n + shape.perStudy() - 1) / shape.perStudy()
	full, _ := recordcodec.Encode(tmpl)
	lean, _ := recordcodec.Encode(capacityRecord(tmpl, shape, studies, 0))
	_, prepared := gateway.PrepareMetadata(tmpl)
	b.Logf("template %s: %d attributes; record %d B whole, %d B lean; prepared metadata %d B (in the blob store)",
		capacityTemplateFile(), len(tmpl.Metadata), len(full), len(lean), len(prepared))

	runtime.GC()
	before, err := memory(ctx)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	batch := make([]*gateway.InstanceRecord, 0, 1000)
	flush := func() {
		if bulk, ok := x.(BulkPutter); ok {
			if err := bulk.PutInstances(ctx, batch); err != nil {
				b.Fatal(err)
			}
		} else {
			for _, rec := range batch {
				if _, _, err := x.PutInstance(ctx, rec); err != nil {
					b.Fatal(err)
				}
			}
		}
		batch = batch[:0]
	}
	for i := range n {
		batch = append(batch, capacityRecord(tmpl, shape, studies, i))
		if len(batch) == cap(batch) {
			flush()
		}
	}
	flush()
	load := time.Since(start)
	after, err := memory(ctx)
	if err != nil {
		b.Fatal(err)
	}
	perInstance := float64(after-before) / float64(n)
	b.ReportMetric(perInstance, "B/instance")
	b.ReportMetric(float64(n)/load.Seconds(), "loaded/s")
	b.Logf("loaded %d instances (%d studies of %d×%d) in %v: %d → %d B, %.0f B per instance; 1 million instances ≈ %.2f GB",
		n, studies, shape.seriesPerStudy, shape.perSeries, load.Round(time.Millisecond), before, after, perInstance, perInstance*1e6/1e9)

	reps := envInt("GATEWAY_BENCH_QUERIES", 200)
	r := rand.New(rand.NewPCG(3, 3))
	pick := func() *gateway.InstanceRecord {
		return capacityRecord(tmpl, shape, studies, r.IntN(studies)*shape.perStudy())
	}
	search := func(level gateway.QueryLevel, study, series, params string) (*gateway.SearchResult, error) {
		v, err := url.ParseQuery(params)
		if err != nil {
			return nil, err
		}
		q, err := gateway.ParseQuery(level, study, series, v, gateway.QueryLimits{Default: 100, Max: 1000})
		if err != nil {
			return nil, err
		}
		return x.Search(ctx, q)
	}
	type step struct {
		name string
		run  func() (int, error)
	}
	count := func(res *gateway.SearchResult, err error) (int, error) {
		if err != nil {
			return 0, err
		}
		return len(res.Items), nil
	}
	steps := []step{
		{"PatientID", func() (int, error) {
			return count(search(gateway.LevelStudy, "", "", "PatientID="+pick().Metadata.String(dicomcodec.TagPatientID)))
		}},
		{"PatientNameWildcard", func() (int, error) {
			name := []rune(pick().Metadata.String(dicomcodec.TagPatientName))
			return count(search(gateway.LevelStudy, "", "", "PatientName="+url.QueryEscape(string(name[:3]))+"*"))
		}},
		{"PatientNameFuzzy", func() (int, error) {
			family, _, _ := strings.Cut(pick().Metadata.String(dicomcodec.TagPatientName), "^")
			rs := []rune(family)
			for i := 1; i < len(rs); i++ {
				if strings.ContainsRune("aeiou", rs[i]) {
					rs[i] = 'y'
				}
			}
			return count(search(gateway.LevelStudy, "", "", "PatientName="+url.QueryEscape(string(rs))+"&fuzzymatching=true"))
		}},
		{"StudyDateRange", func() (int, error) {
			d, _ := time.Parse("20060102", pick().Metadata.String(dicomcodec.TagStudyDate))
			return count(search(gateway.LevelStudy, "", "", "StudyDate="+d.Format("20060102")+"-"+d.AddDate(0, 1, 0).Format("20060102")))
		}},
		{"ModalitiesInStudy", func() (int, error) {
			return count(search(gateway.LevelStudy, "", "", "ModalitiesInStudy="+benchModalities[r.IntN(len(benchModalities))]))
		}},
		{"PatientStudiesSeriesInstances", func() (int, error) {
			rec := pick()
			res, err := search(gateway.LevelStudy, "", "", "PatientID="+rec.Metadata.String(dicomcodec.TagPatientID))
			if err != nil || len(res.Items) == 0 {
				return 0, fmt.Errorf("studies of patient: %d found, err %v", lenItems(res), err)
			}
			res, err = search(gateway.LevelSeries, rec.StudyInstanceUID, "", "")
			if err != nil || len(res.Items) != shape.seriesPerStudy {
				return 0, fmt.Errorf("series of study: %d found, want %d, err %v", lenItems(res), shape.seriesPerStudy, err)
			}
			return count(search(gateway.LevelInstance, rec.StudyInstanceUID, rec.SeriesInstanceUID, ""))
		}},
	}
	for _, st := range steps {
		runtime.GC()
		lat := make([]time.Duration, 0, reps)
		found := 0
		for range reps {
			t0 := time.Now()
			k, err := st.run()
			lat = append(lat, time.Since(t0))
			if err != nil {
				b.Fatalf("%s: %v", st.name, err)
			}
			found += k
		}
		slices.Sort(lat)
		p50, p99 := ms(lat[len(lat)/2]), ms(lat[min(len(lat)-1, len(lat)*99/100)])
		b.ReportMetric(p50, st.name+"-p50-ms")
		b.ReportMetric(p99, st.name+"-p99-ms")
		b.Logf("%-30s p50 %7.2f ms  p99 %7.2f ms  %.1f results", st.name, p50, p99, float64(found)/float64(reps))
	}
}

func lenItems(res *gateway.SearchResult) int {
	if res == nil {
		return 0
	}
	return len(res.Items)
}

// BenchReindex writes GATEWAY_BENCH_REINDEX synthetic CT instances
// (512×512×16-bit, 525 KB each; default 200) to blobs and times
// gateway.Reindex into x, a fresh index, reporting seconds per million
// instances (an extrapolation from the count run: reindex reads every byte
// of every instance, so its time is the store's read rate over the data
// set's size).
func BenchReindex(b *testing.B, blobs gateway.BlobStore, x gateway.Index) {
	ctx := b.Context()
	n := envInt("GATEWAY_BENCH_REINDEX", 200)
	var bytesWritten int64
	for s := 0; s*100 < n; s++ {
		for _, in := range synth.Study(synth.StudySpec{Seed: uint64(9000 + s), Patient: s, InstancesPerSeries: min(100, n-s*100), Rows: 512, Columns: 512}) {
			rc := in.Reader()
			size, err := blobs.Put(ctx, gateway.InstanceKey(in.StudyInstanceUID, in.SeriesInstanceUID, in.SOPInstanceUID), rc)
			rc.Close()
			if err != nil {
				b.Fatal(err)
			}
			bytesWritten += size
		}
	}
	start := time.Now()
	p, err := gateway.Reindex(ctx, blobs, x, dicomcodec.HeaderLimits{}, nil)
	took := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if p.Indexed != n {
		b.Fatalf("reindex indexed %d of %d instances (%d failed)", p.Indexed, n, p.Failed)
	}
	perMillion := took.Seconds() * 1e6 / float64(n)
	b.ReportMetric(perMillion/3600, "h/million")
	b.Logf("reindexed %d instances (%.1f MB) in %v: %.1f instances/s, %.1f MB/s; 1 million instances ≈ %.1f h (extrapolated)",
		n, float64(bytesWritten)/1e6, took.Round(time.Millisecond), float64(n)/took.Seconds(), float64(bytesWritten)/1e6/took.Seconds(), perMillion/3600)
}
