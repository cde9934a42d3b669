package redis

import (
	"context"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// preMetadataIndex strips every instance it writes back to the layout of
// indexes written before prepared metadata existed (no "ord" or "md" field
// in the instance's hash), so that the MetadataReader suite checks the
// fallback that prepares such instances from their records.
type preMetadataIndex struct {
	*Index
	t *testing.T
}

func (l preMetadataIndex) PutInstance(ctx context.Context, rec *gateway.InstanceRecord) (*gateway.InstanceRecord, bool, error) {
	old, ok, err := l.Index.PutInstance(ctx, rec)
	l.strip(ctx, rec)
	return old, ok, err
}

func (l preMetadataIndex) ReplaceInstance(ctx context.Context, rec *gateway.InstanceRecord) error {
	err := l.Index.ReplaceInstance(ctx, rec)
	l.strip(ctx, rec)
	return err
}

func (l preMetadataIndex) PutInstances(ctx context.Context, recs []*gateway.InstanceRecord) error {
	err := l.Index.PutInstances(ctx, recs)
	for _, r := range recs {
		l.strip(ctx, r)
	}
	return err
}

func (l preMetadataIndex) strip(ctx context.Context, rec *gateway.InstanceRecord) {
	if err := l.rdb.HDel(ctx, l.key("i", rec.SOPInstanceUID), "ord", "md").Err(); err != nil {
		l.t.Fatal(err)
	}
}

func TestMetadataReaderLegacyLayout(t *testing.T) {
	storagetest.TestMetadataReader(t, func(t *testing.T) gateway.Index {
		c, err := Open(storagetest.RedisURL(t), storagetest.RedisPrefix(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return preMetadataIndex{NewIndex(c), t}
	})
}
