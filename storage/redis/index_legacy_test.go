package redis

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/internal/recordcodec"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// legacyIndex rewrites every study it writes to the layout of indexes
// written before the compact attributes, the x:np name zsets and the
// phonetic name keys: attrs as DICOM JSON, no ca, no np entries, no x:npok,
// no x:ph entries, no x:phok. Running the query suite through it checks
// that searches still answer correctly from such an index.
type legacyIndex struct {
	*Index
	t *testing.T
}

func (l legacyIndex) PutInstance(ctx context.Context, rec *gateway.InstanceRecord) (*gateway.InstanceRecord, bool, error) {
	old, ok, err := l.Index.PutInstance(ctx, rec)
	l.downgrade(ctx, rec.StudyInstanceUID)
	return old, ok, err
}

func (l legacyIndex) ReplaceInstance(ctx context.Context, rec *gateway.InstanceRecord) error {
	err := l.Index.ReplaceInstance(ctx, rec)
	l.downgrade(ctx, rec.StudyInstanceUID)
	return err
}

func (l legacyIndex) downgrade(ctx context.Context, study string) {
	x := l.Index
	keys := []string{x.key("s", study)}
	series, err := x.rdb.SMembers(ctx, x.key("ss", study)).Result()
	if err != nil {
		l.t.Fatal(err)
	}
	for _, se := range series {
		keys = append(keys, x.key("e", study, se))
	}
	for _, k := range keys {
		ca, err := x.rdb.HGet(ctx, k, "ca").Result()
		if err != nil {
			continue // gone
		}
		d, err := recordcodec.DecodeCompact(ca)
		if err != nil {
			l.t.Fatal(err)
		}
		js, err := json.Marshal(d)
		if err != nil {
			l.t.Fatal(err)
		}
		if err := x.rdb.HSet(ctx, k, "attrs", js).Err(); err != nil {
			l.t.Fatal(err)
		}
		x.rdb.HDel(ctx, k, "ca")
	}
	np, _ := x.rdb.HGet(ctx, x.key("s", study), "np").Result()
	for p := range strings.SplitSeq(np, "\x01") {
		if p != "" {
			x.rdb.ZRem(ctx, x.key("x", "np", p), study)
		}
	}
	x.rdb.HDel(ctx, x.key("s", study), "np")
	x.rdb.Del(ctx, x.key("x", "npok"))
	x.npok.Store(false)
	ph, _ := x.rdb.HGet(ctx, x.key("s", study), "ph").Result()
	for c := range strings.SplitSeq(ph, "\x01") {
		if c != "" {
			x.rdb.ZRem(ctx, x.key("x", "ph", c), study)
		}
	}
	x.rdb.HDel(ctx, x.key("s", study), "ph")
	x.rdb.Del(ctx, x.key("x", "phok"))
	x.phok.Store(false)
}

func TestIndexQueriesLegacyLayout(t *testing.T) {
	storagetest.TestIndexQueries(t, func(t *testing.T) gateway.Index {
		c, err := Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return legacyIndex{NewIndex(c), t}
	})
}

// TestPutInstanceCheckedStudyWithoutIdentitySet: a study written before its
// identity set was kept beside its attributes (no "ids" field), or whose
// attributes a replica of an earlier version rewrote since, is not
// compared: a checked put into it is written, whatever set it expected,
// and from then on the study carries its set and is compared.
func TestPutInstanceCheckedStudyWithoutIdentitySet(t *testing.T) {
	c, err := Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	x, ctx := NewIndex(c), t.Context()
	patient := func(pid string) map[string]any {
		return map[string]any{"00100020": pid, gateway.TagIssuerOfPatientID: "SURREY"}
	}
	if _, _, err := x.PutInstance(ctx, storagetest.Record("1.2.9", "1.2.9.1", "1.2.9.1.1", patient("A100"))); err != nil {
		t.Fatal(err)
	}
	if n, err := x.rdb.HDel(ctx, x.key("s", "1.2.9"), "ids").Result(); err != nil || n != 1 {
		t.Fatalf("HDEL ids: %d, %v; want the study's set removed", n, err)
	}
	if _, created, err := x.PutInstanceChecked(ctx, storagetest.Record("1.2.9", "1.2.9.1", "1.2.9.1.2", patient("A100")), "stale"); err != nil || !created {
		t.Fatalf("checked put into a study without a set: created %v, err %v; want written", created, err)
	}
	ids, err := x.rdb.HGet(ctx, x.key("s", "1.2.9"), "ids").Result()
	if err != nil || ids == "" {
		t.Fatalf("the study's set after the write: %q, %v", ids, err)
	}
	if _, _, err := x.PutInstanceChecked(ctx, storagetest.Record("1.2.9", "1.2.9.1", "1.2.9.1.3", patient("B200")), "stale"); !errors.Is(err, gateway.ErrStudyIdentitiesChanged) {
		t.Fatalf("checked put with a stale set once the study has one: %v, want ErrStudyIdentitiesChanged", err)
	}
	// A replica of an earlier version rewrites the study's attributes
	// without its set (here: another study's): the set is not compared
	// until a write of this version makes it again.
	if _, _, err := x.PutInstance(ctx, storagetest.Record("1.2.10", "1.2.10.1", "1.2.10.1.1", patient("B200"))); err != nil {
		t.Fatal(err)
	}
	other, err := x.rdb.HGet(ctx, x.key("s", "1.2.10"), "ca").Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := x.rdb.HSet(ctx, x.key("s", "1.2.9"), "ca", other).Err(); err != nil {
		t.Fatal(err)
	}
	if _, created, err := x.PutInstanceChecked(ctx, storagetest.Record("1.2.9", "1.2.9.1", "1.2.9.1.4", patient("B200")), "stale"); err != nil || !created {
		t.Fatalf("checked put into a study whose set was not made with its attributes: created %v, err %v; want written", created, err)
	}
	if _, _, err := x.PutInstanceChecked(ctx, storagetest.Record("1.2.9", "1.2.9.1", "1.2.9.1.5", patient("A100")), "stale"); !errors.Is(err, gateway.ErrStudyIdentitiesChanged) {
		t.Fatalf("checked put with a stale set once the set is made again: %v, want ErrStudyIdentitiesChanged", err)
	}
}
