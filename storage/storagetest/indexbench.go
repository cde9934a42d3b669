package storagetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// BulkPutter is implemented by indexes that can load many records at once
// (pipelines, one transaction per chunk); the benchmark loads through it.
type BulkPutter interface {
	PutInstances(ctx context.Context, recs []*gateway.InstanceRecord) error
}

// BenchStudies is the number of studies BenchIndexQueries loads:
// GATEWAY_BENCH_STUDIES, default 100,000.
func BenchStudies() int {
	if n, err := strconv.Atoi(os.Getenv("GATEWAY_BENCH_STUDIES")); err == nil && n > 0 {
		return n
	}
	return 100_000
}

var (
	benchFamily = []string{"Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson", "Wright",
		"Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke", "Patel", "Khan",
		"Lewis", "James", "Phillips", "Mason", "Mitchell", "Rose", "Davis", "Rodriguez", "Cox", "Alexander", "Morgan",
		"Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann", "O'Brien",
		"Murphy", "Kelly", "Sullivan", "Walsh", "Byrne", "Ryan", "Nowak", "Kowalski", "Wiśniewski", "Dubois", "Martin",
		"Bernard", "Garcia", "Fernández", "López", "Martínez", "Rossi", "Russo", "Ferrari", "Esposito", "Bianchi",
		"Yamada", "Tanaka", "Suzuki", "Takahashi", "Watanabe", "Ito", "Nakamura", "Kobayashi", "Kim", "Lee", "Park",
		"Chen", "Wang", "Li", "Zhang", "Liu", "Nguyen", "Tran", "Singh", "Kumar", "Sharma", "Ahmed", "Ali", "Hussain"}
	benchGiven = []string{"John", "Jane", "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Jack", "Mia", "Noah",
		"Emily", "Leo", "Grace", "Arthur", "Lily", "Muhammad", "Freya", "Oscar", "Ella", "Hans", "Anna", "Tarou", "Hanako"}
	benchModalities = []string{"CT", "CT", "CT", "MR", "MR", "CR", "CR", "DX", "US", "US", "MG", "PT", "NM", "XA", "SR", "OT"}
)

// benchRecords generates n studies of one instance each (varied names,
// patient IDs shared by a few studies, dates over 25 years, modalities);
// deterministic for a given n.
func benchRecords(n int) []*gateway.InstanceRecord {
	r := rand.New(rand.NewPCG(1, uint64(n)))
	recs := make([]*gateway.InstanceRecord, n)
	start := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range recs {
		study := fmt.Sprintf("1.2.826.0.1.3680043.10.%d", i+1)
		patient := r.IntN(n*2/3 + 1)
		name := benchFamily[patient%len(benchFamily)] + "^" + benchGiven[(patient/len(benchFamily))%len(benchGiven)]
		date := start.AddDate(0, 0, r.IntN(25*365)).Format("20060102")
		recs[i] = Record(study, study+".1", study+".1.1", map[string]any{
			dicomcodec.TagPatientName:      dicomcodec.PersonName{Alphabetic: name},
			dicomcodec.TagPatientID:        fmt.Sprintf("PID%07d", patient),
			dicomcodec.TagPatientBirthDate: "19600101",
			dicomcodec.TagPatientSex:       []string{"F", "M"}[patient%2],
			dicomcodec.TagStudyDate:        date,
			dicomcodec.TagStudyTime:        "101500",
			dicomcodec.TagAccessionNumber:  fmt.Sprintf("ACC%08d", i+1),
			dicomcodec.TagModality:         benchModalities[r.IntN(len(benchModalities))],
			dicomcodec.TagStudyID:          "1",
			dicomcodec.TagSeriesNumber:     int64(1),
			dicomcodec.TagInstanceNumber:   int64(1),
			"00081030":                     "BENCHMARK STUDY",
			"00080090":                     dicomcodec.PersonName{Alphabetic: "Referrer^Doctor"},
		})
	}
	return recs
}

// BenchIndexQueries loads BenchStudies() generated studies into a fresh
// index and measures the common QIDO-RS study searches (limit 100): patient
// ID, patient name prefix, a one-month date range, a modality and an
// accession number, a misspelt name with fuzzy matching, reporting p50 and p99 latency per query kind.
func BenchIndexQueries(b *testing.B, x gateway.Index) {
	n := BenchStudies()
	recs := benchRecords(n)
	ctx := b.Context()
	loadStart := time.Now()
	if loaded(ctx, x, recs) {
		b.Logf("reusing %d loaded studies", n)
	} else if bulk, ok := x.(BulkPutter); ok {
		if err := bulk.PutInstances(ctx, recs); err != nil {
			b.Fatal(err)
		}
	} else {
		for _, rec := range recs {
			if _, _, err := x.PutInstance(ctx, rec); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Logf("loaded %d studies in %v", n, time.Since(loadStart).Round(time.Millisecond))
	b.ResetTimer()
	// Keep only the values the queries are built from, so that the 100,000
	// generated records do not sit in the heap the searches' GC must mark
	// (recs is not used after this loop, so nothing keeps them alive).
	type benchStudy struct{ pid, name, date, acc string }
	studies := make([]benchStudy, len(recs))
	for i, rec := range recs {
		md := rec.Metadata
		studies[i] = benchStudy{md.String(dicomcodec.TagPatientID), md.String(dicomcodec.TagPatientName),
			md.String(dicomcodec.TagStudyDate), md.String(dicomcodec.TagAccessionNumber)}
	}
	r := rand.New(rand.NewPCG(2, 2))
	pick := func() benchStudy { return studies[r.IntN(len(studies))] }
	for _, qk := range []struct {
		name   string
		params func() string
	}{
		{"PatientID", func() string { return "PatientID=" + pick().pid }},
		{"PatientNamePrefix", func() string {
			name := []rune(pick().name)
			return "PatientName=" + string(name[:3]) + "*"
		}},
		// A misspelt family name (vowels after the first letter written
		// y: Smith → Smyth, Müller → Müllyr), found by its Soundex code.
		{"PatientNameFuzzy", func() string {
			family, _, _ := strings.Cut(pick().name, "^")
			r := []rune(family)
			for i := 1; i < len(r); i++ {
				if strings.ContainsRune("aeiou", r[i]) {
					r[i] = 'y'
				}
			}
			return "PatientName=" + url.QueryEscape(string(r)) + "&fuzzymatching=true"
		}},
		{"DateRange", func() string {
			d, _ := time.Parse("20060102", pick().date)
			return "StudyDate=" + d.Format("20060102") + "-" + d.AddDate(0, 1, 0).Format("20060102")
		}},
		{"Modality", func() string { return "ModalitiesInStudy=" + benchModalities[r.IntN(len(benchModalities))] }},
		{"AccessionNumber", func() string { return "AccessionNumber=" + pick().acc }},
	} {
		runtime.GC() // not the previous query kind's garbage
		b.Run(qk.name, func(b *testing.B) {
			var lat []time.Duration
			found := 0
			for b.Loop() {
				q, err := gateway.ParseQuery(gateway.LevelStudy, "", "", mustParse(b, qk.params()), gateway.QueryLimits{Default: 100, Max: 1000})
				if err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				res, err := x.Search(ctx, q)
				lat = append(lat, time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
				found += len(res.Items)
			}
			slices.Sort(lat)
			b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
			b.ReportMetric(ms(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ms")
			b.ReportMetric(float64(found)/float64(len(lat)), "results/op")
		})
	}
}

// loaded reports whether x already holds the first and last of recs, as an
// index kept from an earlier run does (see BenchKeepPrefix): loading 100,000
// studies takes minutes.
func loaded(ctx context.Context, x gateway.Index, recs []*gateway.InstanceRecord) bool {
	for _, rec := range []*gateway.InstanceRecord{recs[0], recs[len(recs)-1]} {
		if _, err := x.GetInstance(ctx, rec.SOPInstanceUID); err != nil {
			return false
		}
	}
	return true
}

// BenchKeepPrefix is GATEWAY_BENCH_KEEP_PREFIX: when set, a backend's
// benchmark keeps its index under this key prefix (or file) after the run and
// reuses it when it is already loaded, instead of a fresh one removed at the
// end. For benchmarks only.
func BenchKeepPrefix() string { return os.Getenv("GATEWAY_BENCH_KEEP_PREFIX") }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mustParse(b *testing.B, raw string) url.Values {
	b.Helper()
	v, err := url.ParseQuery(raw)
	if err != nil {
		b.Fatal(err)
	}
	return v
}
