package bolt

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"sync"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/internal/lease"
)

var (
	bucketTransfers         = []byte("transfers")          // id → Transfer JSON
	bucketTransferQueue     = []byte("transfer_queue")     // priority byte + seq → queueItem JSON
	bucketTransferQueueIDs  = []byte("transfer_queue_ids") // id → key in transfer_queue
	bucketTransferInstances = []byte("transfer_instances") // id → bucket of sop → InstanceProgress JSON
	bucketIncoming          = []byte("transfers_incoming") // source NUL id → Transfer JSON
	bucketIncomingInstances = []byte("transfer_incoming_instances")
	// The transfers in order of creation, for List: created-at key
	// (listKey) → the transfer's key in bucketTransfers or bucketIncoming.
	bucketTransfersByTime = []byte("transfers_by_time")
	bucketIncomingByTime  = []byte("transfers_incoming_by_time")
	// The transfers of each study, for List by study (retention's
	// question): study UID, NUL, listKey → the transfer's key.
	bucketTransfersByStudy = []byte("transfers_by_study")
	bucketIncomingByStudy  = []byte("transfers_incoming_by_study")
)

// transferIndexes names the buckets of one direction's transfers: the
// records (main) and the two indexes List reads, by time and by study.
type transferIndexes struct {
	main, byTime, byStudy []byte
}

var (
	outgoingIndexes = transferIndexes{bucketTransfers, bucketTransfersByTime, bucketTransfersByStudy}
	incomingIndexes = transferIndexes{bucketIncoming, bucketIncomingByTime, bucketIncomingByStudy}
)

// timeKey and studyKey are the keys of transfer t, stored under key, in
// the by-time and the by-study index.
func timeKey(t *gateway.Transfer, key []byte) []byte { return listKey(t.CreatedAt, key) }
func studyKey(t *gateway.Transfer, key []byte) []byte {
	return append(studyPrefix(t.StudyUID), listKey(t.CreatedAt, key)...)
}

// studyPrefix starts the keys of a study's transfers in a by-study bucket.
func studyPrefix(study string) []byte { return append([]byte(study), 0) }

// add puts the new transfer t, stored under key in ix.main, in both
// indexes, in the transaction that first writes it.
func (ix transferIndexes) add(tx *bbolt.Tx, t *gateway.Transfer, key []byte) error {
	return errors.Join(
		tx.Bucket(ix.byTime).Put(timeKey(t, key), key),
		tx.Bucket(ix.byStudy).Put(studyKey(t, key), key))
}

// build creates each index that the file lacks (a state file from before
// it) in one pass over the transfers, in the transaction that creates its
// bucket, so an index is whole or absent.
func (ix transferIndexes) build(tx *bbolt.Tx) error {
	for name, key := range map[string]func(*gateway.Transfer, []byte) []byte{string(ix.byTime): timeKey, string(ix.byStudy): studyKey} {
		if tx.Bucket([]byte(name)) != nil {
			continue
		}
		idx, err := tx.CreateBucket([]byte(name))
		if err != nil {
			return err
		}
		err = tx.Bucket(ix.main).ForEach(func(k, v []byte) error {
			var t gateway.Transfer
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("transfer %q: %w", k, err)
			}
			return idx.Put(key(&t, k), k)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// listKey orders a transfer in a by-time bucket: its creation time (8
// bytes, big-endian, sign bit flipped so that byte order is time order),
// then its key in the main bucket.
func listKey(created time.Time, key []byte) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(key)), uint64(created.UnixNano())^1<<63)
	return append(b, key...)
}

// queueItem is one transfer waiting in, or handed out from, the queue. A
// lease is held while Owner is set and LeaseUntil has not passed.
type queueItem struct {
	ID         string    `json:"id"`
	NotBefore  time.Time `json:"not_before"`
	Owner      string    `json:"owner,omitempty"`
	Token      string    `json:"token,omitempty"`
	LeaseUntil time.Time `json:"lease_until"`
}

// Queue is the embedded gateway.Queue: the transfer records, their
// progress and the priority queue in the state file. Leases carry a random
// token and an expiry written to the file, so after a crash and restart the
// transfers that were running are handed out again once their lease expires.
// One process holds the file, so waiting consumers are woken in-process.
type Queue struct {
	db   *bbolt.DB
	opts gateway.QueueOptions

	mu   sync.Mutex
	wake chan struct{} // closed and replaced whenever work may have become due
}

var _ gateway.Queue = (*Queue)(nil)

// NewQueue returns the transfer queue stored in db.
func NewQueue(db *DB, opts gateway.QueueOptions) (*Queue, error) {
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketTransfers, bucketTransferQueue, bucketTransferQueueIDs, bucketTransferInstances, bucketIncoming, bucketIncomingInstances} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return errors.Join(outgoingIndexes.build(tx), incomingIndexes.build(tx))
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: create queue buckets: %w", err)
	}
	return &Queue{db: db.bolt, opts: opts.WithDefaults(), wake: make(chan struct{})}, nil
}

func (q *Queue) notify() {
	q.mu.Lock()
	close(q.wake)
	q.wake = make(chan struct{})
	q.mu.Unlock()
}

func (q *Queue) wakeCh() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.wake
}

func qPriorityByte(p gateway.Priority) byte {
	if p == gateway.PriorityUrgent {
		return 0
	}
	return 1
}

func qGetJSON(b *bbolt.Bucket, key []byte, v any) (bool, error) {
	data := b.Get(key)
	if data == nil {
		return false, nil
	}
	return true, json.Unmarshal(data, v)
}

func qPutJSON(b *bbolt.Bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, data)
}

func qGetTransfer(tx *bbolt.Tx, id string) (*gateway.Transfer, error) {
	t := &gateway.Transfer{}
	ok, err := qGetJSON(tx.Bucket(bucketTransfers), []byte(id), t)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("transfer %s: %w", id, gateway.ErrNotFound)
	}
	return t, nil
}

// Enqueue implements gateway.Queue.
func (q *Queue) Enqueue(ctx context.Context, t *gateway.Transfer, notBefore time.Time) (*gateway.Transfer, bool, error) {
	var stored *gateway.Transfer
	created := false
	err := q.db.Update(func(tx *bbolt.Tx) error {
		old, err := qGetTransfer(tx, t.ID)
		if err == nil {
			stored = old
			return nil
		}
		cp := *t
		cp.State = gateway.StateQueued
		if err := qPutJSON(tx.Bucket(bucketTransfers), []byte(t.ID), &cp); err != nil {
			return err
		}
		if err := outgoingIndexes.add(tx, &cp, []byte(cp.ID)); err != nil {
			return err
		}
		if err := q.push(tx, cp.ID, cp.Priority, notBefore); err != nil {
			return err
		}
		stored, created = &cp, true
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("bolt: enqueue %s: %w", t.ID, err)
	}
	if created {
		q.notify()
	}
	return stored, created, nil
}

func (q *Queue) push(tx *bbolt.Tx, id string, p gateway.Priority, notBefore time.Time) error {
	qb := tx.Bucket(bucketTransferQueue)
	seq, err := qb.NextSequence()
	if err != nil {
		return err
	}
	key := make([]byte, 9)
	key[0] = qPriorityByte(p)
	binary.BigEndian.PutUint64(key[1:], seq)
	if err := qPutJSON(qb, key, &queueItem{ID: id, NotBefore: notBefore}); err != nil {
		return err
	}
	return tx.Bucket(bucketTransferQueueIDs).Put([]byte(id), key)
}

// Get implements gateway.Queue.
func (q *Queue) Get(ctx context.Context, id string) (*gateway.Transfer, error) {
	var t *gateway.Transfer
	err := q.db.View(func(tx *bbolt.Tx) error {
		var err error
		t, err = qGetTransfer(tx, id)
		return err
	})
	return t, err
}

// List implements gateway.Queue. Without a study it walks the by-time
// index newest first and stops once it has f.Limit matches or has examined
// QueueOptions.ListScan transfers. With a study it reads all of that
// study's transfers from the by-study index: retention asks for them
// (PendingTransfer) to keep a study whose transfer failed, however long
// ago.
func (q *Queue) List(ctx context.Context, f gateway.TransferFilter) ([]*gateway.Transfer, error) {
	indexes := outgoingIndexes
	if f.Direction == gateway.DirectionIncoming {
		indexes = incomingIndexes
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	var out []*gateway.Transfer
	err := q.db.View(func(tx *bbolt.Tx) error {
		transfers := tx.Bucket(indexes.main)
		keys := newestByTime(tx.Bucket(indexes.byTime), q.opts.ListScan)
		if f.StudyUID != "" {
			keys = newestOfStudy(tx.Bucket(indexes.byStudy), f.StudyUID)
		}
		for key := range keys {
			v := transfers.Get(key)
			if v == nil {
				continue
			}
			t := &gateway.Transfer{}
			if err := json.Unmarshal(v, t); err != nil {
				return err
			}
			if f.Match(t) {
				out = append(out, t)
				if len(out) == limit {
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: list transfers: %w", err)
	}
	qSortNewestFirst(out)
	return out, nil
}

// newestByTime yields the transfer keys of a by-time bucket, newest first,
// at most scan of them.
func newestByTime(b *bbolt.Bucket, scan int) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		c := b.Cursor()
		examined := 0
		for k, key := c.Last(); k != nil && examined < scan; k, key = c.Prev() {
			examined++
			if !yield(key) {
				return
			}
		}
	}
}

// newestOfStudy yields the keys of all of a study's transfers from a
// by-study bucket, newest first.
func newestOfStudy(b *bbolt.Bucket, study string) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		prefix := studyPrefix(study)
		var keys [][]byte
		c := b.Cursor()
		for k, key := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, key = c.Next() {
			keys = append(keys, key)
		}
		for _, key := range slices.Backward(keys) {
			if !yield(key) {
				return
			}
		}
	}
}

func qSortNewestFirst(ts []*gateway.Transfer) {
	slices.SortStableFunc(ts, func(a, b *gateway.Transfer) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
}

// Claim implements gateway.Queue. It scans the queue in key order (urgent
// first, then by age) and polls while waiting, as well as waking on every
// Enqueue, Defer and Requeue of this process.
func (q *Queue) Claim(ctx context.Context, consumer string, wait time.Duration) (*gateway.Lease, error) {
	var wake <-chan struct{}
	return lease.PollClaim(ctx, wait,
		func(context.Context) (*gateway.Lease, error) {
			wake = q.wakeCh() // taken before the scan, so that no wake-up after it is missed
			return q.tryClaim(consumer)
		},
		func(ctx context.Context, d time.Duration) (*gateway.Lease, error) {
			timer := time.NewTimer(min(d, 50*time.Millisecond))
			defer timer.Stop()
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-wake:
			case <-timer.C:
			}
			return nil, nil
		})
}

func (q *Queue) tryClaim(consumer string) (*gateway.Lease, error) {
	var claimed *gateway.Lease
	now := q.opts.Now()
	err := q.db.Update(func(tx *bbolt.Tx) error {
		qb := tx.Bucket(bucketTransferQueue)
		c := qb.Cursor()
		var drop [][]byte
		defer func() {
			for _, k := range drop {
				_ = q.dropItem(tx, k)
			}
		}()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			it := &queueItem{}
			if err := json.Unmarshal(v, it); err != nil {
				return err
			}
			if it.NotBefore.After(now) || (it.Owner != "" && it.LeaseUntil.After(now)) {
				continue
			}
			t, err := qGetTransfer(tx, it.ID)
			if err != nil || t.State.Terminal() {
				drop = append(drop, slices.Clone(k))
				continue
			}
			it.Owner, it.Token, it.LeaseUntil = consumer, lease.Token(), now.Add(q.opts.VisibilityTimeout)
			if err := qPutJSON(qb, k, it); err != nil {
				return err
			}
			claimed = &gateway.Lease{TransferID: it.ID, Consumer: consumer, Token: it.Token}
			return nil
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: claim: %w", err)
	}
	return claimed, nil
}

func (q *Queue) dropItem(tx *bbolt.Tx, key []byte) error {
	it := &queueItem{}
	if ok, err := qGetJSON(tx.Bucket(bucketTransferQueue), key, it); err != nil || !ok {
		return err
	}
	if err := tx.Bucket(bucketTransferQueue).Delete(key); err != nil {
		return err
	}
	return tx.Bucket(bucketTransferQueueIDs).Delete([]byte(it.ID))
}

// held returns the queue key and item of l's transfer if l still holds it,
// else ErrConflict.
func (q *Queue) held(tx *bbolt.Tx, l *gateway.Lease) ([]byte, *queueItem, error) {
	key := tx.Bucket(bucketTransferQueueIDs).Get([]byte(l.TransferID))
	it := &queueItem{}
	if key != nil {
		if _, err := qGetJSON(tx.Bucket(bucketTransferQueue), key, it); err != nil {
			return nil, nil, err
		}
	}
	if key == nil || it.Token != l.Token || it.Owner != l.Consumer {
		return nil, nil, fmt.Errorf("transfer %s: lease of %s no longer held: %w", l.TransferID, l.Consumer, gateway.ErrConflict)
	}
	return slices.Clone(key), it, nil
}

// Extend implements gateway.Queue.
func (q *Queue) Extend(ctx context.Context, l *gateway.Lease) (*gateway.Transfer, error) {
	var t *gateway.Transfer
	err := q.db.Update(func(tx *bbolt.Tx) error {
		key, it, err := q.held(tx, l)
		if err != nil {
			return err
		}
		it.LeaseUntil = q.opts.Now().Add(q.opts.VisibilityTimeout)
		if err := qPutJSON(tx.Bucket(bucketTransferQueue), key, it); err != nil {
			return err
		}
		t, err = qGetTransfer(tx, l.TransferID)
		return err
	})
	return t, err
}

// Save implements gateway.Queue.
func (q *Queue) Save(ctx context.Context, l *gateway.Lease, t *gateway.Transfer) error {
	return q.db.Update(func(tx *bbolt.Tx) error {
		if _, _, err := q.held(tx, l); err != nil {
			return err
		}
		old, err := qGetTransfer(tx, l.TransferID)
		if err != nil {
			return err
		}
		if old.State != t.State && !gateway.TransferTransitionAllowed(gateway.ActorWorker, old.State, t.State) {
			return fmt.Errorf("transfer %s was %s: %w", l.TransferID, old.State, gateway.ErrConflict)
		}
		return qPutJSON(tx.Bucket(bucketTransfers), []byte(l.TransferID), t)
	})
}

// Finish implements gateway.Queue.
func (q *Queue) Finish(ctx context.Context, l *gateway.Lease, t *gateway.Transfer) error {
	return q.db.Update(func(tx *bbolt.Tx) error {
		key, _, err := q.held(tx, l)
		if err != nil {
			return err
		}
		old, err := qGetTransfer(tx, l.TransferID)
		if err != nil {
			return err
		}
		cp := *t
		if !gateway.TransferTransitionAllowed(gateway.ActorWorker, old.State, cp.State) {
			cp.State = old.State // cancelled by an admin meanwhile: it stays cancelled
		}
		if err := q.dropItem(tx, key); err != nil {
			return err
		}
		return qPutJSON(tx.Bucket(bucketTransfers), []byte(l.TransferID), &cp)
	})
}

// Defer implements gateway.Queue.
func (q *Queue) Defer(ctx context.Context, l *gateway.Lease, t *gateway.Transfer, until time.Time) error {
	var ended error // the transfer ended meanwhile (an admin cancelled it): its item is released, the record kept
	err := q.db.Update(func(tx *bbolt.Tx) error {
		key, it, err := q.held(tx, l)
		if err != nil {
			return err
		}
		old, err := qGetTransfer(tx, l.TransferID)
		if err != nil {
			return err
		}
		if old.State != gateway.StateQueued && !gateway.TransferTransitionAllowed(gateway.ActorWorker, old.State, gateway.StateQueued) {
			// As on Redis: the lease is given up with the conflict, so an
			// admin's retry need not wait for it to run out.
			ended = fmt.Errorf("transfer %s was %s: %w", l.TransferID, old.State, gateway.ErrConflict)
			return q.dropItem(tx, key)
		}
		*it = queueItem{ID: it.ID, NotBefore: until}
		if err := qPutJSON(tx.Bucket(bucketTransferQueue), key, it); err != nil {
			return err
		}
		cp := *t
		cp.State = gateway.StateQueued
		return qPutJSON(tx.Bucket(bucketTransfers), []byte(l.TransferID), &cp)
	})
	if err == nil && ended == nil {
		q.notify()
	}
	return cmp.Or(err, ended)
}

// Cancel implements gateway.Queue.
func (q *Queue) Cancel(ctx context.Context, id string) (*gateway.Transfer, error) {
	var t *gateway.Transfer
	err := q.db.Update(func(tx *bbolt.Tx) error {
		var err error
		t, err = qGetTransfer(tx, id)
		if err != nil {
			return err
		}
		if !gateway.TransferTransitionAllowed(gateway.ActorAdmin, t.State, gateway.StateCancelled) {
			return fmt.Errorf("transfer %s is already %s: %w", id, t.State, gateway.ErrConflict)
		}
		if t.State == gateway.StateQueued {
			if key := tx.Bucket(bucketTransferQueueIDs).Get([]byte(id)); key != nil {
				if err := q.dropItem(tx, slices.Clone(key)); err != nil {
					return err
				}
			}
		}
		now := q.opts.Now()
		t.State, t.UpdatedAt, t.NextAttemptAt = gateway.StateCancelled, now, nil
		return qPutJSON(tx.Bucket(bucketTransfers), []byte(id), t)
	})
	return t, err
}

// Requeue implements gateway.Queue.
func (q *Queue) Requeue(ctx context.Context, t *gateway.Transfer) error {
	err := q.db.Update(func(tx *bbolt.Tx) error {
		old, err := qGetTransfer(tx, t.ID)
		if err != nil {
			return err
		}
		if !gateway.TransferTransitionAllowed(gateway.ActorAdmin, old.State, gateway.StateQueued) {
			return fmt.Errorf("transfer %s is %s, only a failed or cancelled transfer can be retried: %w", t.ID, old.State, gateway.ErrConflict)
		}
		if tx.Bucket(bucketTransferQueueIDs).Get([]byte(t.ID)) != nil {
			return fmt.Errorf("transfer %s is still stopping; try again in a few seconds: %w", t.ID, gateway.ErrConflict)
		}
		cp := *t
		cp.State = gateway.StateQueued
		if err := qPutJSON(tx.Bucket(bucketTransfers), []byte(t.ID), &cp); err != nil {
			return err
		}
		return q.push(tx, t.ID, t.Priority, time.Time{})
	})
	if err == nil {
		q.notify()
	}
	return err
}

// Postpone implements gateway.Queue.
func (q *Queue) Postpone(ctx context.Context, id string, until time.Time) error {
	err := q.db.Update(func(tx *bbolt.Tx) error {
		t, err := qGetTransfer(tx, id)
		if err != nil {
			return err
		}
		key := tx.Bucket(bucketTransferQueueIDs).Get([]byte(id))
		it := &queueItem{}
		if key != nil {
			if _, err := qGetJSON(tx.Bucket(bucketTransferQueue), key, it); err != nil {
				return err
			}
		}
		if t.State != gateway.StateQueued || key == nil || it.Owner != "" {
			return fmt.Errorf("transfer %s is no longer waiting: %w", id, gateway.ErrConflict)
		}
		it.NotBefore = until
		return qPutJSON(tx.Bucket(bucketTransferQueue), key, it)
	})
	if err == nil {
		q.notify()
	}
	return err
}

// SetInstances implements gateway.Queue.
func (q *Queue) SetInstances(ctx context.Context, id string, ps []gateway.InstanceProgress) error {
	return q.db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.Bucket(bucketTransferInstances).CreateBucketIfNotExists([]byte(id))
		if err != nil {
			return err
		}
		for i := range ps {
			if err := qPutJSON(b, []byte(ps[i].SOPInstanceUID), &ps[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// Instances implements gateway.Queue.
func (q *Queue) Instances(ctx context.Context, id string) ([]gateway.InstanceProgress, error) {
	var out []gateway.InstanceProgress
	err := q.db.View(func(tx *bbolt.Tx) error {
		if _, err := qGetTransfer(tx, id); err != nil {
			return err
		}
		return qReadProgress(tx.Bucket(bucketTransferInstances).Bucket([]byte(id)), &out)
	})
	return out, err
}

func qReadProgress(b *bbolt.Bucket, out *[]gateway.InstanceProgress) error {
	if b == nil {
		return nil
	}
	return b.ForEach(func(_, v []byte) error {
		var p gateway.InstanceProgress
		if err := json.Unmarshal(v, &p); err != nil {
			return err
		}
		*out = append(*out, p)
		return nil
	})
}

// ResetInstances implements gateway.Queue.
func (q *Queue) ResetInstances(ctx context.Context, id string, state string) error {
	return q.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketTransferInstances).Bucket([]byte(id))
		if b == nil {
			return nil
		}
		var del [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var p gateway.InstanceProgress
			if err := json.Unmarshal(v, &p); err != nil {
				return err
			}
			if p.State == state {
				del = append(del, slices.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// RecordIncoming implements gateway.Queue: the batch in one transaction.
func (q *Queue) RecordIncoming(ctx context.Context, batch []gateway.IncomingInstance) (*gateway.Transfer, error) {
	if err := gateway.CheckIncomingBatch(batch); err != nil {
		return nil, fmt.Errorf("bolt: record incoming: %w", err)
	}
	key := []byte(batch[0].Source + "\x00" + batch[0].TransferID)
	var out *gateway.Transfer
	err := q.db.Update(func(tx *bbolt.Tx) error {
		var t *gateway.Transfer
		cur := &gateway.Transfer{}
		seen, err := qGetJSON(tx.Bucket(bucketIncoming), key, cur)
		if err != nil {
			return err
		}
		if seen {
			t = cur
		}
		ib, err := tx.Bucket(bucketIncomingInstances).CreateBucketIfNotExists(key)
		if err != nil {
			return err
		}
		for _, in := range batch {
			var prev gateway.InstanceProgress
			if _, err := qGetJSON(ib, []byte(in.SOPInstanceUID), &prev); err != nil {
				return err
			}
			var p gateway.InstanceProgress
			t, p = gateway.ApplyIncoming(t, prev.State, in)
			if err := qPutJSON(ib, []byte(in.SOPInstanceUID), &p); err != nil {
				return err
			}
		}
		out = t
		if !seen {
			if err := incomingIndexes.add(tx, t, key); err != nil {
				return err
			}
		}
		return qPutJSON(tx.Bucket(bucketIncoming), key, t)
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: record incoming %s: %w", batch[0].TransferID, err)
	}
	return out, nil
}

// IncomingByID implements gateway.Queue. An incoming transfer's key is
// its source, NUL, its ID, so this reads every incoming key (not the
// records): an admin's lookup, not a hot path.
func (q *Queue) IncomingByID(ctx context.Context, id string) ([]*gateway.Transfer, error) {
	suffix := append([]byte{0}, id...)
	var out []*gateway.Transfer
	err := q.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketIncoming).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if !bytes.HasSuffix(k, suffix) {
				continue
			}
			t := &gateway.Transfer{}
			if err := json.Unmarshal(v, t); err != nil {
				return fmt.Errorf("transfer %q: %w", k, err)
			}
			out = append(out, t)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: incoming transfer %s: %w", id, err)
	}
	qSortNewestFirst(out)
	return out, nil
}

// IncomingInstances returns the per-instance state of an incoming transfer.
func (q *Queue) IncomingInstances(ctx context.Context, source, id string) ([]gateway.InstanceProgress, error) {
	var out []gateway.InstanceProgress
	err := q.db.View(func(tx *bbolt.Tx) error {
		return qReadProgress(tx.Bucket(bucketIncomingInstances).Bucket([]byte(source+"\x00"+id)), &out)
	})
	return out, err
}

// Depth implements gateway.Queue: transfers queued and not handed out.
func (q *Queue) Depth(ctx context.Context) (map[gateway.Priority]int, error) {
	d := map[gateway.Priority]int{gateway.PriorityUrgent: 0, gateway.PriorityNormal: 0}
	err := q.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketTransferQueue).ForEach(func(k, v []byte) error {
			it := &queueItem{}
			if err := json.Unmarshal(v, it); err != nil {
				return err
			}
			if it.Owner == "" {
				if k[0] == 0 {
					d[gateway.PriorityUrgent]++
				} else {
					d[gateway.PriorityNormal]++
				}
			}
			return nil
		})
	})
	return d, err
}
