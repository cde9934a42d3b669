package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/internal/lease"
)

// Queue is the production gateway.Queue on Redis, shared by every replica.
//
// Layout (every key under the client prefix and the hash tag {xfer}, so the
// scripts' keys share one Redis Cluster slot):
//
//	{xfer}:q:urgent, {xfer}:q:normal   streams, one entry (field id) per transfer ready to run;
//	                                    consumer group "workers"
//	{xfer}:d:urgent, {xfer}:d:normal   sorted sets of transfers waiting for a time (score: unix ms)
//	{xfer}:t:<id>                      hash: json (the record), state, updated, prio, entry
//	                                    (the stream entry ID while in a stream, else "")
//	{xfer}:all                         sorted set of transfer IDs by creation time
//	{xfer}:study:<study UID>           sorted set of the study's transfer IDs by creation time
//	{xfer}:i:<id>                      hash: SOP Instance UID → progress JSON
//	{xfer}:in:<source>:<id>, {xfer}:in:i:<source>:<id>, {xfer}:in:all   incoming transfers
//	{xfer}:in-study:<study UID>        sorted set of the study's incoming transfers (<source>:<id>)
//	{xfer}:study-index                 hash: out, in → the newest creation time (unix ms) that
//	                                    indexStudies has put in the study sets
//
// The state field is authoritative; it is overlaid on the JSON when read, so
// a cancel needs no JSON rewrite in Lua. Every change that must be atomic
// with the queue (enqueue, save, finish, defer, cancel, requeue) is one Lua
// script, and each re-checks what it depends on, because go-redis retries a
// command after a network error and a script may run twice. A lease is the
// pending entry (XPENDING names its consumer); XAUTOCLAIM hands an entry
// whose consumer stopped extending it to another consumer, after which the
// old consumer's scripts see it is no longer theirs.
//
// The scripts' state checks are a copy of gateway.TransferTransitionAllowed
// in Lua (a script cannot call Go); storagetest.TestQueue's Transitions
// drives every (actor, from, to) through this queue and fails when the copy
// and the rules differ.
type Queue struct {
	rdb         goredis.UniversalClient
	prefix      string
	opts        gateway.QueueOptions
	groupsReady atomic.Bool

	studyIndexMu sync.Mutex
	studyIndexed time.Time // when indexStudies last ran, guarded by studyIndexMu
}

var _ gateway.Queue = (*Queue)(nil)

const queueGroup = "workers"

// NewQueue returns the transfer queue in c's Redis, creates the consumer
// groups if needed, and puts the transfers written since the last start
// in their study's set (ensureStudyIndex).
func NewQueue(ctx context.Context, c *Client, opts gateway.QueueOptions) (*Queue, error) {
	q := &Queue{rdb: c.rdb, prefix: c.Key("{xfer}:"), opts: opts.WithDefaults()}
	return q, errors.Join(q.ensureGroups(ctx), q.ensureStudyIndex(ctx))
}

// ensureGroups creates the streams and their consumer group once. A gateway
// may start while Redis is down: NewQueue then returns the Queue with the
// error, and Claim retries here until Redis answers (and again after a
// NOGROUP, e.g. a Redis restarted without its AOF).
func (q *Queue) ensureGroups(ctx context.Context) error {
	if q.groupsReady.Load() {
		return nil
	}
	for _, p := range []gateway.Priority{gateway.PriorityUrgent, gateway.PriorityNormal} {
		err := q.rdb.XGroupCreateMkStream(ctx, q.stream(p), queueGroup, "0").Err()
		if err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
			return translate(err)
		}
	}
	q.groupsReady.Store(true)
	return nil
}

func (q *Queue) key(name string) string { return q.prefix + name }
func (q *Queue) tkey(id string) string  { return q.prefix + "t:" + id }

func (q *Queue) stream(p gateway.Priority) string {
	if p == gateway.PriorityUrgent {
		return q.key("q:urgent")
	}
	return q.key("q:normal")
}

func (q *Queue) delayed(p gateway.Priority) string {
	if p == gateway.PriorityUrgent {
		return q.key("d:urgent")
	}
	return q.key("d:normal")
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// queueOwns is the Lua prelude every lease-holding script uses: does
// consumer hold stream entry id, and is it still the transfer's entry?
const queueOwns = `
local function owns(stream, group, tkey, id, consumer)
  if redis.call('HGET', tkey, 'entry') ~= id then return false end
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  return p[1] ~= nil and p[1][2] == consumer
end
`

// KEYS: t, stream, delayed, all, study. ARGV: id, json, updated, prio, notBeforeMs, createdMs, nowMs.
var queueEnqueueScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'state', 'queued', 'updated', ARGV[3], 'prio', ARGV[4], 'entry', '')
if tonumber(ARGV[5]) > tonumber(ARGV[7]) then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
else
  local e = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
  redis.call('HSET', KEYS[1], 'entry', e)
end
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
return 1
`)

// queuePromoteScript moves one transfer whose time has come from its
// delayed set to its stream (the ids are read first, so that the script
// declares the transfer's hash among its keys). KEYS: t, delayed, stream.
// ARGV: id, nowMs. Returns 1 when promoted.
var queuePromoteScript = goredis.NewScript(`
local sc = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not sc or tonumber(sc) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'state') == 'queued' and redis.call('HGET', KEYS[1], 'entry') == '' then
  local e = redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])
  redis.call('HSET', KEYS[1], 'entry', e)
  return 1
end
return 0
`)

// KEYS: t, stream. ARGV: group, entry. Acknowledges and deletes an entry
// that must not run (its transfer is gone, terminal, or has a newer entry).
var queueDropScript = goredis.NewScript(`
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'entry') == ARGV[2] then redis.call('HSET', KEYS[1], 'entry', '') end
return 1
`)

// KEYS: t, stream. ARGV: group, entry, id. Gives back an entry read by
// accident (a blocking read over both streams returned two): it goes to the
// end of its stream for another consumer.
var queueGiveBackScript = goredis.NewScript(`
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'entry') == ARGV[2] then
  local e = redis.call('XADD', KEYS[2], '*', 'id', ARGV[3])
  redis.call('HSET', KEYS[1], 'entry', e)
end
return 1
`)

// KEYS: t, stream. ARGV: group, entry, consumer.
var queueExtendScript = goredis.NewScript(queueOwns + `
if not owns(KEYS[2], ARGV[1], KEYS[1], ARGV[2], ARGV[3]) then return false end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return redis.call('HMGET', KEYS[1], 'json', 'state', 'updated')
`)

// KEYS: t, stream. ARGV: group, entry, consumer, json, state, updated.
var queueSaveScript = goredis.NewScript(queueOwns + `
if not owns(KEYS[2], ARGV[1], KEYS[1], ARGV[2], ARGV[3]) then return 'lost' end
if redis.call('HGET', KEYS[1], 'state') == 'cancelled' then return 'cancelled' end
redis.call('HSET', KEYS[1], 'json', ARGV[4], 'state', ARGV[5], 'updated', ARGV[6])
return 'ok'
`)

// KEYS: t, stream. ARGV: group, entry, consumer, json, state, updated.
var queueFinishScript = goredis.NewScript(queueOwns + `
if not owns(KEYS[2], ARGV[1], KEYS[1], ARGV[2], ARGV[3]) then return 'lost' end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'entry', '', 'json', ARGV[4], 'updated', ARGV[6])
if redis.call('HGET', KEYS[1], 'state') ~= 'cancelled' then redis.call('HSET', KEYS[1], 'state', ARGV[5]) end
return 'ok'
`)

// KEYS: t, stream, delayed. ARGV: group, entry, consumer, json, updated, untilMs, id.
var queueDeferScript = goredis.NewScript(queueOwns + `
if not owns(KEYS[2], ARGV[1], KEYS[1], ARGV[2], ARGV[3]) then return 'lost' end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'entry', '')
if redis.call('HGET', KEYS[1], 'state') == 'cancelled' then return 'cancelled' end
redis.call('HSET', KEYS[1], 'json', ARGV[4], 'state', 'queued', 'updated', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[7])
return 'ok'
`)

// KEYS: t, stream, delayed. ARGV: group, updated, id.
var queueCancelScript = goredis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'missing' end
if st == 'completed' or st == 'failed' or st == 'cancelled' then return st end
if st == 'queued' then
  local e = redis.call('HGET', KEYS[1], 'entry')
  if e and e ~= '' then
    redis.call('XACK', KEYS[2], ARGV[1], e)
    redis.call('XDEL', KEYS[2], e)
    redis.call('HSET', KEYS[1], 'entry', '')
  end
  redis.call('ZREM', KEYS[3], ARGV[3])
end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated', ARGV[2])
return 'ok'
`)

// KEYS: t, stream. ARGV: json, updated, prio, id.
var queueRequeueScript = goredis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'missing' end
if st ~= 'failed' and st ~= 'cancelled' then return st end
local e = redis.call('HGET', KEYS[1], 'entry')
if e and e ~= '' then return 'held' end
local ne = redis.call('XADD', KEYS[2], '*', 'id', ARGV[4])
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'state', 'queued', 'updated', ARGV[2], 'prio', ARGV[3], 'entry', ne)
return 'ok'
`)

// KEYS: t, stream, delayed. ARGV: group, id, untilMs.
var queuePostponeScript = goredis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'missing' end
if st ~= 'queued' then return 'conflict' end
local e = redis.call('HGET', KEYS[1], 'entry')
if e and e ~= '' then
  local p = redis.call('XPENDING', KEYS[2], ARGV[1], e, e, 1)
  if p[1] ~= nil then return 'conflict' end
  redis.call('XDEL', KEYS[2], e)
  redis.call('HSET', KEYS[1], 'entry', '')
elseif not redis.call('ZSCORE', KEYS[3], ARGV[2]) then
  return 'conflict'
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 'ok'
`)

// scriptErr turns a script's status reply into the contract's errors.
func scriptErr(id, status string) error {
	switch status {
	case "ok":
		return nil
	case "missing":
		return fmt.Errorf("transfer %s: %w", id, gateway.ErrNotFound)
	case "lost":
		return fmt.Errorf("transfer %s: lease no longer held: %w", id, gateway.ErrConflict)
	case "cancelled":
		return fmt.Errorf("transfer %s was cancelled: %w", id, gateway.ErrConflict)
	case "held":
		return fmt.Errorf("transfer %s is still stopping; try again in a few seconds: %w", id, gateway.ErrConflict)
	default:
		return fmt.Errorf("transfer %s is %s: %w", id, status, gateway.ErrConflict)
	}
}

func (q *Queue) run(ctx context.Context, s *goredis.Script, id string, keys []string, args ...any) error {
	status, err := s.Run(ctx, q.rdb, keys, args...).Text()
	if err != nil {
		return translate(err)
	}
	return scriptErr(id, status)
}

// Enqueue implements gateway.Queue.
func (q *Queue) Enqueue(ctx context.Context, t *gateway.Transfer, notBefore time.Time) (*gateway.Transfer, bool, error) {
	cp := *t
	cp.State = gateway.StateQueued
	data, err := json.Marshal(&cp)
	if err != nil {
		return nil, false, err
	}
	n, err := queueEnqueueScript.Run(ctx, q.rdb,
		[]string{q.tkey(t.ID), q.stream(t.Priority), q.delayed(t.Priority), q.key(outgoingLists.all), q.key(outgoingLists.study + t.StudyUID)},
		t.ID, data, stamp(t.UpdatedAt), string(t.Priority), ms(notBefore), ms(t.CreatedAt), ms(q.opts.Now())).Int()
	if err != nil {
		return nil, false, translate(err)
	}
	if n == 1 {
		return &cp, true, nil
	}
	stored, err := q.Get(ctx, t.ID)
	return stored, false, err
}

// decodeTransfer reads a record from its hash fields json, state, updated.
func decodeTransfer(id string, vals []any) (*gateway.Transfer, error) {
	if len(vals) == 0 || vals[0] == nil {
		return nil, fmt.Errorf("transfer %s: %w", id, gateway.ErrNotFound)
	}
	s, _ := vals[0].(string)
	t := &gateway.Transfer{}
	if err := json.Unmarshal([]byte(s), t); err != nil {
		return nil, fmt.Errorf("transfer %s: decode: %w", id, err)
	}
	if len(vals) < 3 { // an incoming record: the JSON is all there is
		return t, nil
	}
	if st, ok := vals[1].(string); ok && st != "" {
		t.State = gateway.TransferState(st)
	}
	if u, ok := vals[2].(string); ok {
		if at, err := time.Parse(time.RFC3339Nano, u); err == nil && at.After(t.UpdatedAt) {
			t.UpdatedAt = at
		}
	}
	if t.State != gateway.StateQueued {
		t.NextAttemptAt = nil
	}
	return t, nil
}

// Get implements gateway.Queue.
func (q *Queue) Get(ctx context.Context, id string) (*gateway.Transfer, error) {
	vals, err := q.rdb.HMGet(ctx, q.tkey(id), "json", "state", "updated").Result()
	if err != nil {
		return nil, translate(err)
	}
	return decodeTransfer(id, vals)
}

// List implements gateway.Queue. Without a study it examines the newest
// QueueOptions.ListScan transfers; with one, all of that study's
// transfers, from its set: retention asks for them (PendingTransfer) to
// keep a study whose transfer failed, however long ago.
func (q *Queue) List(ctx context.Context, f gateway.TransferFilter) ([]*gateway.Transfer, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	dir := outgoingLists
	if f.Direction == gateway.DirectionIncoming {
		dir = incomingLists
	}
	index, scan := q.key(dir.all), int64(q.opts.ListScan)
	if f.StudyUID != "" {
		if err := q.ensureStudyIndex(ctx); err != nil {
			return nil, err
		}
		index, scan = q.key(dir.study+f.StudyUID), 0
	}
	members, err := q.rdb.ZRevRange(ctx, index, 0, scan-1).Result()
	if err != nil {
		return nil, translate(err)
	}
	var out []*gateway.Transfer
	for chunk := range slices.Chunk(members, 200) {
		pipe := q.rdb.Pipeline()
		cmds := make([]*goredis.SliceCmd, len(chunk))
		for i, m := range chunk {
			if dir.incoming {
				cmds[i] = pipe.HMGet(ctx, q.key(dir.record+m), "json")
			} else {
				cmds[i] = pipe.HMGet(ctx, q.key(dir.record+m), "json", "state", "updated")
			}
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
			return nil, translate(err)
		}
		for i, cmd := range cmds {
			t, err := decodeTransfer(chunk[i], cmd.Val())
			if errors.Is(err, gateway.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if f.Match(t) {
				out = append(out, t)
				if len(out) == limit {
					return out, nil
				}
			}
		}
	}
	return out, nil
}

// transferLists names the keys List reads for one direction: the set of
// all transfers, the prefix of a study's set and of a record (before the
// set's member), and the field of the study-index hash.
type transferLists struct {
	all, study, record, mark string
	incoming                 bool
}

var (
	outgoingLists = transferLists{all: "all", study: "study:", record: "t:", mark: "out"}
	incomingLists = transferLists{all: "in:all", study: "in-study:", record: "in:", mark: "in", incoming: true}
)

// studyIndexMargin is how far before the newest transfer a previous
// indexStudies covered the next one starts: a transfer can be written
// after one created a little later (replicas' clocks, a slow request).
const studyIndexMargin = time.Hour

// studyIndexEvery is how often a List by study first puts the transfers
// written since the last run in their study's set (ensureStudyIndex).
var studyIndexEvery = 5 * time.Minute

// ensureStudyIndex puts in its study's set every transfer created since
// the newest one a previous run covered (less studyIndexMargin), when
// the Queue is made and then at most every studyIndexEvery. Enqueue and
// RecordIncoming keep the sets; this covers transfers written before the
// sets existed, and those that replicas of an earlier version write during
// a rolling upgrade, within studyIndexEvery.
func (q *Queue) ensureStudyIndex(ctx context.Context) error {
	q.studyIndexMu.Lock()
	defer q.studyIndexMu.Unlock()
	if !q.studyIndexed.IsZero() && time.Since(q.studyIndexed) < studyIndexEvery {
		return nil
	}
	for _, dir := range []transferLists{outgoingLists, incomingLists} {
		if err := q.indexStudies(ctx, dir); err != nil {
			return fmt.Errorf("redis: index transfers by study: %w", translate(err))
		}
	}
	q.studyIndexed = time.Now()
	return nil
}

// indexStudies is ensureStudyIndex for one direction, a page of
// studyIndexPage transfers at a time.
func (q *Queue) indexStudies(ctx context.Context, dir transferLists) error {
	mark := q.key("study-index")
	from := "-inf"
	covered, err := q.rdb.HGet(ctx, mark, dir.mark).Int64()
	switch {
	case err == nil:
		from = strconv.FormatInt(covered-studyIndexMargin.Milliseconds(), 10)
	case !errors.Is(err, goredis.Nil):
		return err
	}
	newest := covered
	for offset := int64(0); ; offset += studyIndexPage {
		page, err := q.rdb.ZRangeByScoreWithScores(ctx, q.key(dir.all), &goredis.ZRangeBy{Min: from, Max: "+inf", Offset: offset, Count: studyIndexPage}).Result()
		if err != nil {
			return err
		}
		if len(page) == 0 {
			break
		}
		read := q.rdb.Pipeline()
		records := make([]*goredis.StringCmd, len(page))
		for i, z := range page {
			records[i] = read.HGet(ctx, q.key(dir.record+z.Member.(string)), "json")
		}
		if _, err := read.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
			return err
		}
		write := q.rdb.Pipeline()
		for i, z := range page {
			var t gateway.Transfer
			if err := json.Unmarshal([]byte(records[i].Val()), &t); err != nil {
				continue // a record gone or unreadable: List skips it too
			}
			write.ZAddNX(ctx, q.key(dir.study+t.StudyUID), z)
			newest = max(newest, int64(z.Score))
		}
		if _, err := write.Exec(ctx); err != nil {
			return err
		}
	}
	if newest > covered {
		return q.rdb.HSet(ctx, mark, dir.mark, newest).Err()
	}
	return nil
}

// studyIndexPage is how many transfers indexStudies reads per round trip.
const studyIndexPage = 1000

// Claim implements gateway.Queue: due delayed transfers are moved into
// their stream; then, urgent before normal, an entry whose consumer stopped
// extending it (XAUTOCLAIM) or a new one (XREADGROUP); then a blocking
// XREADGROUP over both streams (Block > 0; Block 0 would wait forever).
func (q *Queue) Claim(ctx context.Context, consumer string, wait time.Duration) (*gateway.Lease, error) {
	return lease.PollClaim(ctx, wait,
		func(ctx context.Context) (*gateway.Lease, error) {
			if err := q.ensureGroups(ctx); err != nil {
				return nil, err
			}
			if err := q.promote(ctx); err != nil {
				return nil, err
			}
			return q.claimNow(ctx, consumer)
		},
		func(ctx context.Context, remaining time.Duration) (*gateway.Lease, error) {
			return q.readBlocking(ctx, consumer, remaining)
		})
}

// readBlocking waits for a new entry on either stream, at most 500 ms so
// that delayed transfers falling due are promoted, and accepts the first,
// urgent before normal, giving back any other it was handed.
func (q *Queue) readBlocking(ctx context.Context, consumer string, remaining time.Duration) (*gateway.Lease, error) {
	block := max(min(remaining, 500*time.Millisecond), time.Millisecond)
	res, err := q.rdb.XReadGroup(ctx, &goredis.XReadGroupArgs{
		Group: queueGroup, Consumer: consumer, Count: 1, Block: block,
		Streams: []string{q.stream(gateway.PriorityUrgent), q.stream(gateway.PriorityNormal), ">", ">"},
	}).Result()
	if errors.Is(err, goredis.Nil) {
		return nil, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if strings.Contains(err.Error(), "NOGROUP") {
			q.groupsReady.Store(false)
		}
		return nil, translate(err)
	}
	var got []entry
	for _, s := range res {
		for _, m := range s.Messages {
			got = append(got, entry{stream: s.Stream, msg: m})
		}
	}
	slices.SortStableFunc(got, func(a, b entry) int {
		return boolInt(b.stream == q.stream(gateway.PriorityUrgent)) - boolInt(a.stream == q.stream(gateway.PriorityUrgent))
	})
	var accepted *gateway.Lease
	for _, e := range got {
		if accepted != nil {
			id, _ := e.msg.Values["id"].(string)
			if err := queueGiveBackScript.Run(ctx, q.rdb, []string{q.tkey(id), e.stream}, queueGroup, e.msg.ID, id).Err(); err != nil {
				return nil, translate(err)
			}
			continue
		}
		if accepted, err = q.accept(ctx, consumer, e); err != nil {
			return nil, err
		}
	}
	return accepted, nil
}

type entry struct {
	stream string
	msg    goredis.XMessage
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// promote moves up to 100 transfers per priority whose time has come from
// the delayed sets to the streams, one script each.
func (q *Queue) promote(ctx context.Context) error {
	now := ms(q.opts.Now())
	prios := []gateway.Priority{gateway.PriorityUrgent, gateway.PriorityNormal}
	pipe := q.rdb.Pipeline()
	due := make([]*goredis.StringSliceCmd, len(prios))
	for i, p := range prios {
		due[i] = pipe.ZRangeByScore(ctx, q.delayed(p), &goredis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(now, 10), Count: 100})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return translate(err)
	}
	for i, p := range prios {
		for _, id := range due[i].Val() {
			if err := queuePromoteScript.Run(ctx, q.rdb, []string{q.tkey(id), q.delayed(p), q.stream(p)}, id, now).Err(); err != nil {
				return translate(err)
			}
		}
	}
	return nil
}

func (q *Queue) claimNow(ctx context.Context, consumer string) (*gateway.Lease, error) {
	for _, p := range []gateway.Priority{gateway.PriorityUrgent, gateway.PriorityNormal} {
		stream := q.stream(p)
		// XAUTOCLAIM examines ten pending entries per COUNT at most and
		// returns where to go on: an entry whose consumer died can sit
		// behind any number of live ones, so the walk follows the cursor to
		// the end ("0-0").
		for start := "0-0"; ; {
			msgs, next, err := q.rdb.XAutoClaim(ctx, &goredis.XAutoClaimArgs{
				Stream: stream, Group: queueGroup, Consumer: consumer,
				MinIdle: q.opts.VisibilityTimeout, Start: start, Count: 1,
			}).Result()
			if err != nil && !errors.Is(err, goredis.Nil) {
				return nil, translate(err)
			}
			for _, m := range msgs {
				l, err := q.accept(ctx, consumer, entry{stream: stream, msg: m})
				if l != nil || err != nil {
					return l, err
				}
			}
			if next == "" || next == "0-0" {
				break
			}
			start = next
		}
		for {
			res, err := q.rdb.XReadGroup(ctx, &goredis.XReadGroupArgs{
				Group: queueGroup, Consumer: consumer, Count: 1, Block: -1,
				Streams: []string{stream, ">"},
			}).Result()
			if errors.Is(err, goredis.Nil) || (err == nil && (len(res) == 0 || len(res[0].Messages) == 0)) {
				break
			}
			if err != nil {
				return nil, translate(err)
			}
			l, err := q.accept(ctx, consumer, entry{stream: stream, msg: res[0].Messages[0]})
			if l != nil || err != nil {
				return l, err
			}
		}
	}
	return nil, nil
}

// accept turns a delivered entry into a lease, or drops it (nil, nil) when
// its transfer must not run: gone, finished, cancelled, or superseded.
func (q *Queue) accept(ctx context.Context, consumer string, e entry) (*gateway.Lease, error) {
	id, _ := e.msg.Values["id"].(string)
	if id != "" {
		vals, err := q.rdb.HMGet(ctx, q.tkey(id), "state", "entry").Result()
		if err != nil {
			return nil, translate(err)
		}
		st, _ := vals[0].(string)
		cur, _ := vals[1].(string)
		if (st == string(gateway.StateQueued) || st == string(gateway.StateRunning)) && cur == e.msg.ID {
			return &gateway.Lease{TransferID: id, Consumer: consumer, Token: e.msg.ID}, nil
		}
	}
	err := queueDropScript.Run(ctx, q.rdb, []string{q.tkey(id), e.stream}, queueGroup, e.msg.ID).Err()
	return nil, translate(err)
}

// leaseStream finds the stream of l's entry from the transfer's priority.
func (q *Queue) leaseStream(ctx context.Context, l *gateway.Lease) (string, error) {
	p, err := q.rdb.HGet(ctx, q.tkey(l.TransferID), "prio").Result()
	if err != nil {
		return "", translate(err)
	}
	return q.stream(gateway.Priority(p)), nil
}

// Extend implements gateway.Queue.
func (q *Queue) Extend(ctx context.Context, l *gateway.Lease) (*gateway.Transfer, error) {
	stream, err := q.leaseStream(ctx, l)
	if err != nil {
		return nil, err
	}
	vals, err := queueExtendScript.Run(ctx, q.rdb, []string{q.tkey(l.TransferID), stream}, queueGroup, l.Token, l.Consumer).Slice()
	if errors.Is(err, goredis.Nil) {
		return nil, scriptErr(l.TransferID, "lost")
	}
	if err != nil {
		return nil, translate(err)
	}
	return decodeTransfer(l.TransferID, vals)
}

// Save implements gateway.Queue.
func (q *Queue) Save(ctx context.Context, l *gateway.Lease, t *gateway.Transfer) error {
	return q.leaseScript(ctx, queueSaveScript, l, t)
}

// Finish implements gateway.Queue.
func (q *Queue) Finish(ctx context.Context, l *gateway.Lease, t *gateway.Transfer) error {
	return q.leaseScript(ctx, queueFinishScript, l, t)
}

func (q *Queue) leaseScript(ctx context.Context, s *goredis.Script, l *gateway.Lease, t *gateway.Transfer) error {
	stream, err := q.leaseStream(ctx, l)
	if err != nil {
		return err
	}
	data, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return q.run(ctx, s, l.TransferID, []string{q.tkey(l.TransferID), stream},
		queueGroup, l.Token, l.Consumer, data, string(t.State), stamp(t.UpdatedAt))
}

// Defer implements gateway.Queue.
func (q *Queue) Defer(ctx context.Context, l *gateway.Lease, t *gateway.Transfer, until time.Time) error {
	stream, err := q.leaseStream(ctx, l)
	if err != nil {
		return err
	}
	cp := *t
	cp.State = gateway.StateQueued
	data, err := json.Marshal(&cp)
	if err != nil {
		return err
	}
	return q.run(ctx, queueDeferScript, l.TransferID, []string{q.tkey(l.TransferID), stream, q.delayed(t.Priority)},
		queueGroup, l.Token, l.Consumer, data, stamp(t.UpdatedAt), ms(until), l.TransferID)
}

// Cancel implements gateway.Queue.
func (q *Queue) Cancel(ctx context.Context, id string) (*gateway.Transfer, error) {
	p, err := q.rdb.HGet(ctx, q.tkey(id), "prio").Result()
	if errors.Is(err, goredis.Nil) {
		return nil, scriptErr(id, "missing")
	}
	if err != nil {
		return nil, translate(err)
	}
	prio := gateway.Priority(p)
	if err := q.run(ctx, queueCancelScript, id, []string{q.tkey(id), q.stream(prio), q.delayed(prio)},
		queueGroup, stamp(q.opts.Now()), id); err != nil {
		return nil, err
	}
	return q.Get(ctx, id)
}

// Requeue implements gateway.Queue.
func (q *Queue) Requeue(ctx context.Context, t *gateway.Transfer) error {
	cp := *t
	cp.State = gateway.StateQueued
	data, err := json.Marshal(&cp)
	if err != nil {
		return err
	}
	return q.run(ctx, queueRequeueScript, t.ID, []string{q.tkey(t.ID), q.stream(t.Priority)},
		data, stamp(t.UpdatedAt), string(t.Priority), t.ID)
}

// Postpone implements gateway.Queue.
func (q *Queue) Postpone(ctx context.Context, id string, until time.Time) error {
	p, err := q.rdb.HGet(ctx, q.tkey(id), "prio").Result()
	if errors.Is(err, goredis.Nil) {
		return scriptErr(id, "missing")
	}
	if err != nil {
		return translate(err)
	}
	prio := gateway.Priority(p)
	return q.run(ctx, queuePostponeScript, id, []string{q.tkey(id), q.stream(prio), q.delayed(prio)},
		queueGroup, id, ms(until))
}

// SetInstances implements gateway.Queue.
func (q *Queue) SetInstances(ctx context.Context, id string, ps []gateway.InstanceProgress) error {
	if len(ps) == 0 {
		return nil
	}
	args := make([]any, 0, 2*len(ps))
	for i := range ps {
		data, err := json.Marshal(&ps[i])
		if err != nil {
			return err
		}
		args = append(args, ps[i].SOPInstanceUID, data)
	}
	return translate(q.rdb.HSet(ctx, q.key("i:"+id), args...).Err())
}

// Instances implements gateway.Queue.
func (q *Queue) Instances(ctx context.Context, id string) ([]gateway.InstanceProgress, error) {
	n, err := q.rdb.Exists(ctx, q.tkey(id)).Result()
	if err != nil {
		return nil, translate(err)
	}
	if n == 0 {
		return nil, scriptErr(id, "missing")
	}
	return q.progress(ctx, q.key("i:"+id))
}

func (q *Queue) progress(ctx context.Context, key string) ([]gateway.InstanceProgress, error) {
	m, err := q.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, translate(err)
	}
	out := make([]gateway.InstanceProgress, 0, len(m))
	for _, v := range m {
		var p gateway.InstanceProgress
		if err := json.Unmarshal([]byte(v), &p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b gateway.InstanceProgress) int { return strings.Compare(a.SOPInstanceUID, b.SOPInstanceUID) })
	return out, nil
}

// ResetInstances implements gateway.Queue.
func (q *Queue) ResetInstances(ctx context.Context, id string, state string) error {
	ps, err := q.progress(ctx, q.key("i:"+id))
	if err != nil {
		return err
	}
	var del []string
	for _, p := range ps {
		if p.State == state {
			del = append(del, p.SOPInstanceUID)
		}
	}
	if len(del) == 0 {
		return nil
	}
	return translate(q.rdb.HDel(ctx, q.key("i:"+id), del...).Err())
}

// RecordIncoming implements gateway.Queue with an optimistic transaction
// (WATCH) over the record and the instances' entries, retried on conflict:
// the whole batch in one read and one MULTI.
func (q *Queue) RecordIncoming(ctx context.Context, batch []gateway.IncomingInstance) (*gateway.Transfer, error) {
	if err := gateway.CheckIncomingBatch(batch); err != nil {
		return nil, fmt.Errorf("redis: record incoming: %w", err)
	}
	member := batch[0].Source + ":" + batch[0].TransferID
	rkey, ikey := q.key(incomingLists.record+member), q.key("in:i:"+member)
	sops := make([]string, len(batch))
	for i, in := range batch {
		sops[i] = in.SOPInstanceUID
	}
	var out *gateway.Transfer
	txf := func(tx *goredis.Tx) error {
		var t *gateway.Transfer
		if s, err := tx.HGet(ctx, rkey, "json").Result(); err == nil {
			t = &gateway.Transfer{}
			if err := json.Unmarshal([]byte(s), t); err != nil {
				return err
			}
		} else if !errors.Is(err, goredis.Nil) {
			return err
		}
		prevs, err := tx.HMGet(ctx, ikey, sops...).Result()
		if err != nil {
			return err
		}
		state := map[string]string{} // within the batch, a repeated instance sees its earlier entry
		fields := make([]any, 0, 2*len(batch))
		for i, in := range batch {
			prev, seen := state[in.SOPInstanceUID]
			if s, ok := prevs[i].(string); ok && !seen {
				var p gateway.InstanceProgress
				if err := json.Unmarshal([]byte(s), &p); err != nil {
					return err
				}
				prev = p.State
			}
			var p gateway.InstanceProgress
			t, p = gateway.ApplyIncoming(t, prev, in)
			state[in.SOPInstanceUID] = p.State
			pj, err := json.Marshal(&p)
			if err != nil {
				return err
			}
			fields = append(fields, in.SOPInstanceUID, pj)
		}
		tj, err := json.Marshal(t)
		if err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(pipe goredis.Pipeliner) error {
			pipe.HSet(ctx, rkey, "json", tj)
			pipe.HSet(ctx, ikey, fields...)
			created := goredis.Z{Score: float64(t.CreatedAt.UnixMilli()), Member: member}
			pipe.ZAddNX(ctx, q.key(incomingLists.all), created)
			pipe.ZAddNX(ctx, q.key(incomingLists.study+t.StudyUID), created)
			return nil
		})
		out = t
		return err
	}
	for range 20 {
		err := q.rdb.Watch(ctx, txf, rkey, ikey)
		if errors.Is(err, goredis.TxFailedErr) {
			continue
		}
		if err != nil {
			return nil, translate(err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("incoming transfer %s: too much contention: %w", batch[0].TransferID, gateway.ErrUnavailable)
}

// IncomingByID implements gateway.Queue. The set of incoming transfers
// names each <source>:<id>, so this scans it for the ID (ZSCAN with a
// pattern, in Redis): an admin's lookup, not a hot path.
func (q *Queue) IncomingByID(ctx context.Context, id string) ([]*gateway.Transfer, error) {
	if err := gateway.ValidateTransferID(id); err != nil { // no pattern characters in the ID
		return nil, err
	}
	var members []string
	iter := q.rdb.ZScan(ctx, q.key(incomingLists.all), 0, "*:"+id, 1000).Iterator()
	for iter.Next(ctx) {
		m := iter.Val()
		if strings.HasSuffix(m, ":"+id) {
			members = append(members, m)
		}
		iter.Next(ctx) // the score
	}
	if err := iter.Err(); err != nil {
		return nil, translate(err)
	}
	var out []*gateway.Transfer
	for _, m := range members {
		vals, err := q.rdb.HMGet(ctx, q.key(incomingLists.record+m), "json").Result()
		if err != nil {
			return nil, translate(err)
		}
		t, err := decodeTransfer(m, vals)
		if errors.Is(err, gateway.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	slices.SortStableFunc(out, func(a, b *gateway.Transfer) int { return b.CreatedAt.Compare(a.CreatedAt) })
	return out, nil
}

// IncomingInstances implements gateway.Queue.
func (q *Queue) IncomingInstances(ctx context.Context, source, id string) ([]gateway.InstanceProgress, error) {
	return q.progress(ctx, q.key("in:i:"+source+":"+id))
}

// Depth implements gateway.Queue: entries not yet delivered plus transfers
// waiting for their time, per priority.
func (q *Queue) Depth(ctx context.Context) (map[gateway.Priority]int, error) {
	d := map[gateway.Priority]int{}
	for _, p := range []gateway.Priority{gateway.PriorityUrgent, gateway.PriorityNormal} {
		pipe := q.rdb.Pipeline()
		xlen := pipe.XLen(ctx, q.stream(p))
		pend := pipe.XPending(ctx, q.stream(p), queueGroup)
		zc := pipe.ZCard(ctx, q.delayed(p))
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
			return nil, translate(err)
		}
		d[p] = int(xlen.Val()-pend.Val().Count) + int(zc.Val())
	}
	return d, nil
}
