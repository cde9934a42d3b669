package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/internal/recordcodec"
)

// Buckets of the study usage retention reads (gateway.UsageIndex), written
// in the transaction that writes the instance records.
var (
	bucketStudyUsage    = []byte("index.study_usage")    // study uid → bytes, instances, received ms (3 × int64 BE)
	bucketStudyReceived = []byte("index.study_received") // received ms (int64 BE) \0 study → empty
	bucketUsageTotals   = []byte("index.usage_totals")   // "bytes", "studies" → int64 BE
)

var _ gateway.UsageIndex = (*Index)(nil)

type studyUsage struct {
	bytes, instances, receivedMs int64
}

func decodeUsage(v []byte) studyUsage {
	if len(v) != 24 {
		return studyUsage{}
	}
	return studyUsage{
		bytes:      int64(binary.BigEndian.Uint64(v[0:8])),
		instances:  int64(binary.BigEndian.Uint64(v[8:16])),
		receivedMs: int64(binary.BigEndian.Uint64(v[16:24])),
	}
}

func (u studyUsage) encode() []byte {
	v := make([]byte, 24)
	binary.BigEndian.PutUint64(v[0:8], uint64(u.bytes))
	binary.BigEndian.PutUint64(v[8:16], uint64(u.instances))
	binary.BigEndian.PutUint64(v[16:24], uint64(u.receivedMs))
	return v
}

func receivedKey(ms int64, study string) []byte {
	k := make([]byte, 9, 9+len(study))
	binary.BigEndian.PutUint64(k, uint64(ms))
	return append(k, study...)
}

func addTotal(tx *bbolt.Tx, name string, delta int64) error {
	b := tx.Bucket(bucketUsageTotals)
	var cur int64
	if v := b.Get([]byte(name)); len(v) == 8 {
		cur = int64(binary.BigEndian.Uint64(v))
	}
	v := make([]byte, 8)
	binary.BigEndian.PutUint64(v, uint64(cur+delta))
	return b.Put([]byte(name), v)
}

// addUsage counts rec into its study's usage (addRecord calls it).
func addUsage(tx *bbolt.Tx, rec *gateway.InstanceRecord) error {
	b := tx.Bucket(bucketStudyUsage)
	old := b.Get([]byte(rec.StudyInstanceUID))
	u := decodeUsage(old)
	if old == nil {
		if err := addTotal(tx, "studies", 1); err != nil {
			return err
		}
	} else if err := tx.Bucket(bucketStudyReceived).Delete(receivedKey(u.receivedMs, rec.StudyInstanceUID)); err != nil {
		return err
	}
	u.bytes += rec.Size
	u.instances++
	u.receivedMs = max(u.receivedMs, rec.StoredAt.UnixMilli())
	if err := tx.Bucket(bucketStudyReceived).Put(receivedKey(u.receivedMs, rec.StudyInstanceUID), nil); err != nil {
		return err
	}
	if err := addTotal(tx, "bytes", rec.Size); err != nil {
		return err
	}
	return b.Put([]byte(rec.StudyInstanceUID), u.encode())
}

// removeUsage is the inverse of addUsage except that ReceivedAt stays (see
// gateway.StudyUsage); the study's entries go with its last instance.
func removeUsage(tx *bbolt.Tx, rec *gateway.InstanceRecord) error {
	b := tx.Bucket(bucketStudyUsage)
	old := b.Get([]byte(rec.StudyInstanceUID))
	if old == nil {
		return nil
	}
	u := decodeUsage(old)
	if err := addTotal(tx, "bytes", -rec.Size); err != nil {
		return err
	}
	u.bytes -= rec.Size
	u.instances--
	if u.instances > 0 {
		return b.Put([]byte(rec.StudyInstanceUID), u.encode())
	}
	if err := addTotal(tx, "studies", -1); err != nil {
		return err
	}
	if err := tx.Bucket(bucketStudyReceived).Delete(receivedKey(u.receivedMs, rec.StudyInstanceUID)); err != nil {
		return err
	}
	return b.Delete([]byte(rec.StudyInstanceUID))
}

// keepReceived puts the study's ReceivedAt back to ms when a replacement
// moved it earlier: removing a study's only instance drops its usage, and
// adding the replacement starts it again at the record's StoredAt, but
// replacing an instance (a restated record: gateway identity_restate.go)
// is not a receipt that makes a study younger or older for retention.
// ms 0: nothing to keep.
func keepReceived(tx *bbolt.Tx, study string, ms int64) error {
	b := tx.Bucket(bucketStudyUsage)
	u := decodeUsage(b.Get([]byte(study)))
	if ms <= u.receivedMs || u.instances == 0 {
		return nil
	}
	if err := tx.Bucket(bucketStudyReceived).Delete(receivedKey(u.receivedMs, study)); err != nil {
		return err
	}
	u.receivedMs = ms
	if err := tx.Bucket(bucketStudyReceived).Put(receivedKey(ms, study), nil); err != nil {
		return err
	}
	return b.Put([]byte(study), u.encode())
}

// backfillUsage builds the usage buckets of an index written before they
// existed, from every instance record (once, at open).
func backfillUsage(tx *bbolt.Tx) error {
	return tx.Bucket(bucketInstances).ForEach(func(_, v []byte) error {
		rec, err := recordcodec.Decode(v)
		if err != nil {
			return err
		}
		return addUsage(tx, rec)
	})
}

// StudiesByReceived implements gateway.UsageIndex: a cursor over the
// received-order bucket.
func (x *Index) StudiesByReceived(ctx context.Context, after gateway.UsageCursor, limit int) ([]gateway.StudyUsage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	var out []gateway.StudyUsage
	err := x.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketStudyReceived).Cursor()
		var k []byte
		if after.StudyInstanceUID == "" && after.ReceivedAt.IsZero() {
			k, _ = c.First()
		} else {
			start := receivedKey(after.ReceivedAt.UnixMilli(), after.StudyInstanceUID)
			k, _ = c.Seek(start)
			if k != nil && bytes.Equal(k, start) {
				k, _ = c.Next()
			}
		}
		for ; k != nil && len(out) < limit; k, _ = c.Next() {
			study := string(k[9:])
			u := decodeUsage(tx.Bucket(bucketStudyUsage).Get(k[9:]))
			su := gateway.StudyUsage{StudyInstanceUID: study, Bytes: u.bytes, Instances: int(u.instances),
				ReceivedAt: time.UnixMilli(u.receivedMs).UTC()}
			if s, err := getStudy(tx, study); err == nil {
				for m := range s.Modalities {
					su.Modalities = append(su.Modalities, m)
				}
				slices.Sort(su.Modalities)
			} else if !errors.Is(err, gateway.ErrNotFound) {
				return err
			}
			out = append(out, su)
		}
		return nil
	})
	if err != nil {
		return nil, unavailable("studies by received", err)
	}
	return out, nil
}

// UsageTotals implements gateway.UsageIndex from the totals bucket.
func (x *Index) UsageTotals(ctx context.Context) (gateway.UsageTotals, error) {
	if err := ctx.Err(); err != nil {
		return gateway.UsageTotals{}, err
	}
	var t gateway.UsageTotals
	err := x.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketUsageTotals)
		if v := b.Get([]byte("bytes")); len(v) == 8 {
			t.Bytes = int64(binary.BigEndian.Uint64(v))
		}
		if v := b.Get([]byte("studies")); len(v) == 8 {
			t.Studies = int(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	if err != nil {
		return t, unavailable("usage totals", err)
	}
	return t, nil
}
