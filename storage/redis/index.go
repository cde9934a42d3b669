package redis

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/internal/lease"
	"github.com/dicom-gateway/gateway/storage/internal/recordcodec"
)

// Index is the production gateway.Index on Redis, shared by every replica.
//
// Keys (under the client prefix, all in the one hash slot "{idx}" so that
// the Lua scripts stay valid on Redis Cluster):
//
//	{idx}:i:<sop>              hash: rec (InstanceRecord JSON), st, se, mod, cls
//	{idx}:s:<study>            hash: ca (study-level attributes, recordcodec.AppendCompact), n, ns,
//	                           m:<modality>, c:<sop class> counts, and the values it is indexed
//	                           under: d, pid, acc, names, np, ph; b (bytes) and rt (received,
//	                           Unix ms) for retention (usage.go)
//	{idx}:ss:<study>           set of series UIDs
//	{idx}:e:<study>:<series>   hash: ca (series-level attributes, compact), n
//	{idx}:ei:<study>:<series>  set of SOP Instance UIDs
//	{idx}:x:date               zset of study UIDs scored by StudyDate (YYYYMMDD, 0 = none)
//	{idx}:x:pid:<id>, {idx}:x:acc:<accession>, {idx}:x:mod:<modality>
//	                           zsets of study UIDs scored by StudyDate
//	{idx}:x:name               zset (all scores 0) of "<NAME KEY>\x00<study>" for
//	                           ZRANGEBYLEX prefix search on upper-cased patient names
//	{idx}:x:ph:<code>          zset of study UIDs scored by StudyDate, one per Soundex code of
//	                           a patient-name word (gateway.NamePhoneticKeys), for fuzzy matching
//	{idx}:x:np:<hex prefix>    zset of study UIDs scored by StudyDate, one per 1-, 2- and 3-byte
//	                           prefix of the whole name groups (gateway.NameGroupKeys): a
//	                           name-prefix search without fuzzy matching walks it newest first,
//	                           as far as its page needs, instead of ordering every match
//	{idx}:x:npok               set when every study has its np entries (the index was empty
//	                           when they were introduced); without it name searches use x:name
//	{idx}:x:phok               set when every study is in its x:ph zsets (the
//	                           index was empty when they were introduced); without it a fuzzy
//	                           name search walks x:date and the engine compares codes
//	{idx}:lock:<sop>           lease token
//	{idx}:x:recv, {idx}:x:bytes study usage for retention: usage.go
//
// The summaries hold their attributes in the compact form, so that a page of
// 100 studies decodes without encoding/json; hashes written before it hold
// attrs (DICOM JSON) instead, which searches still read and the next write
// of the study replaces.
//
// Every write is one Lua script, so records, summaries and secondary indexes
// change together, and a script re-run by go-redis after a lost reply is a
// no-op: put recognises its own record, replace rewrites the same state.
type Index struct {
	rdb    goredis.UniversalClient
	prefix string
	npok   atomic.Bool // x:npok seen
	phok   atomic.Bool // x:phok seen
}

var _ gateway.Index = (*Index)(nil)

// NewIndex returns the index stored under c's key prefix.
func NewIndex(c *Client) *Index {
	return &Index{rdb: c.Redis(), prefix: c.Key("{idx}:")}
}

func (x *Index) key(parts ...string) string { return x.prefix + strings.Join(parts, ":") }

// writeScript puts or replaces one instance. ARGV: prefix, mode ("put" or
// "replace"), sop, study, series, rec, modality, sop class, study attrs,
// series attrs (both compact), date, patient id, accession, name keys joined
// by \1, name prefixes (namePrefixes) joined by \1, metadata order entry
// (gateway.MetadataOrder), name Soundex codes joined by \1, size, stored at
// (Unix ms; both for the study usage, usage.go). The prepared metadata is
// not kept here (gateway.MetadataStore); a record replaced or deleted loses
// the "md" field earlier versions stored beside it.
// Returns {1} when written, {0, existing rec} when put found a record.
var writeScript = goredis.NewScript(`
local P, mode, sop, st, se, rec = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local mod, cls, sattrs, eattrs, d, pid, acc, names = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local np, ord, ph, size, at = ARGV[15], ARGV[16], ARGV[17], ARGV[18], ARGV[19]
local ik = P .. 'i:' .. sop

` + luaUsageFunctions + luaIndexFunctions + `
if redis.call('EXISTS', ik) == 1 then
  local old = redis.call('HGET', ik, 'rec')
  if mode == 'put' then
    if old == rec then usage_backfill(ik, st, size, at) return {1} end
    return {0, old}
  end
  if old == rec then usage_backfill(ik, st, size, at) return {1} end
  remove()
end

redis.call('HSET', ik, 'rec', rec, 'st', st, 'se', se, 'mod', mod, 'cls', cls, 'ord', ord, 'sz', size)
local sk, ek = P .. 's:' .. st, P .. 'e:' .. st .. ':' .. se
redis.call('SADD', P .. 'ei:' .. st .. ':' .. se, sop)
local newSeries = redis.call('SADD', P .. 'ss:' .. st, se) == 1
redis.call('HSET', ek, 'ca', eattrs)
redis.call('HDEL', ek, 'attrs')
redis.call('HINCRBY', ek, 'n', 1)

unindex(sk, st)
if redis.call('EXISTS', P .. 'x:date') == 0 then
  redis.call('SET', P .. 'x:npok', '1')
  redis.call('SET', P .. 'x:phok', '1')
end
redis.call('HSET', sk, 'ca', sattrs, 'd', d, 'pid', pid, 'acc', acc, 'names', names, 'np', np, 'ph', ph)
redis.call('HDEL', sk, 'attrs')
redis.call('HINCRBY', sk, 'n', 1)
usage_add(sk, st, size, at)
if newSeries then redis.call('HINCRBY', sk, 'ns', 1) else redis.call('HINCRBY', sk, 'ns', 0) end
if mod ~= '' then redis.call('HINCRBY', sk, 'm:' .. mod, 1) end
if cls ~= '' then redis.call('HINCRBY', sk, 'c:' .. cls, 1) end
local score = tonumber(d)
redis.call('ZADD', P .. 'x:date', score, st)
if pid ~= '' then redis.call('ZADD', P .. 'x:pid:' .. pid, score, st) end
if acc ~= '' then redis.call('ZADD', P .. 'x:acc:' .. acc, score, st) end
for _, n in ipairs(split(names)) do redis.call('ZADD', P .. 'x:name', 0, n .. '\0' .. st) end
for _, n in ipairs(split(np)) do redis.call('ZADD', P .. 'x:np:' .. n, score, st) end
for _, c in ipairs(split(ph)) do redis.call('ZADD', P .. 'x:ph:' .. c, score, st) end
for _, f in ipairs(redis.call('HKEYS', sk)) do
  if string.sub(f, 1, 2) == 'm:' then redis.call('ZADD', P .. 'x:mod:' .. string.sub(f, 3), score, st) end
end
return {1}
`)

// luaIndexFunctions are the Lua functions writeScript and deleteScript
// share, so that replacing and deleting an instance undo its index entries
// the same way. They use the calling script's P (key prefix), ik (instance
// key) and sop.
const luaIndexFunctions = `
local function split(s)
  local t = {}
  for part in string.gmatch(s or '', '[^\1]+') do t[#t + 1] = part end
  return t
end

-- unindex removes study st from the secondary indexes it is listed under.
local function unindex(sk, study)
  local v = redis.call('HMGET', sk, 'pid', 'acc', 'names', 'np', 'ph')
  if v[1] and v[1] ~= '' then redis.call('ZREM', P .. 'x:pid:' .. v[1], study) end
  if v[2] and v[2] ~= '' then redis.call('ZREM', P .. 'x:acc:' .. v[2], study) end
  for _, n in ipairs(split(v[3])) do redis.call('ZREM', P .. 'x:name', n .. '\0' .. study) end
  for _, n in ipairs(split(v[4])) do redis.call('ZREM', P .. 'x:np:' .. n, study) end
  for _, c in ipairs(split(v[5])) do redis.call('ZREM', P .. 'x:ph:' .. c, study) end
  redis.call('ZREM', P .. 'x:date', study)
end

local function remove()
  local v = redis.call('HMGET', ik, 'st', 'se', 'mod', 'cls', 'sz')
  local ost, ose, omod, ocls, osz = v[1], v[2], v[3], v[4], tonumber(v[5]) or 0
  redis.call('DEL', ik)
  local sk, ek = P .. 's:' .. ost, P .. 'e:' .. ost .. ':' .. ose
  redis.call('SREM', P .. 'ei:' .. ost .. ':' .. ose, sop)
  local seriesGone = false
  if redis.call('HINCRBY', ek, 'n', -1) <= 0 then
    redis.call('DEL', ek)
    redis.call('SREM', P .. 'ss:' .. ost, ose)
    seriesGone = true
  end
  local studyGone = redis.call('HINCRBY', sk, 'n', -1) <= 0
  usage_remove(sk, ost, osz, studyGone)
  if studyGone then
    unindex(sk, ost)
    local fields = redis.call('HKEYS', sk)
    for _, f in ipairs(fields) do
      if string.sub(f, 1, 2) == 'm:' then redis.call('ZREM', P .. 'x:mod:' .. string.sub(f, 3), ost) end
    end
    redis.call('DEL', sk, P .. 'ss:' .. ost)
    return
  end
  if seriesGone then redis.call('HINCRBY', sk, 'ns', -1) end
  if omod and omod ~= '' and redis.call('HINCRBY', sk, 'm:' .. omod, -1) <= 0 then
    redis.call('HDEL', sk, 'm:' .. omod)
    redis.call('ZREM', P .. 'x:mod:' .. omod, ost)
  end
  if ocls and ocls ~= '' and redis.call('HINCRBY', sk, 'c:' .. ocls, -1) <= 0 then
    redis.call('HDEL', sk, 'c:' .. ocls)
  end
end
`

// deleteScript removes one instance. ARGV: prefix, sop. Returns 0 when the
// instance does not exist.
var deleteScript = goredis.NewScript(`
local P, sop = ARGV[1], ARGV[2]
local ik = P .. 'i:' .. sop
` + luaUsageFunctions + luaIndexFunctions + `
if redis.call('EXISTS', ik) == 0 then return 0 end
remove()
return 1
`)

// unlockScript deletes a lease only if it still holds the caller's token.
var unlockScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// renewScript extends a lease only if it is still ours.
var renewScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`)

// Lock takes a lease with SET NX PX and a random token, polling every 10 ms
// while another holder has it; unlock deletes it only if the token is still
// ours (a lease that expired and was taken by another is left alone).
func (x *Index) Lock(ctx context.Context, sopInstanceUID string, ttl time.Duration) (func(), error) {
	token := lease.Token()
	key := x.key("lock", sopInstanceUID)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := x.rdb.SetNX(ctx, key, token, ttl).Result()
		if err != nil {
			return nil, translate(err)
		}
		if !ok {
			// A retried SET NX whose first attempt succeeded finds our own token.
			cur, err := x.rdb.Get(ctx, key).Result()
			if err == nil && cur == token {
				ok = true
			} else if err != nil && !errors.Is(err, goredis.Nil) {
				return nil, translate(err)
			}
		}
		if ok {
			renew := func() {
				rctx, cancel := context.WithTimeout(context.Background(), max(ttl/3, time.Second))
				defer cancel()
				_ = renewScript.Run(rctx, x.rdb, []string{key}, token, ttl.Milliseconds()).Err()
			}
			release := func() {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				// Best effort: a lease not released expires after ttl.
				_ = unlockScript.Run(rctx, x.rdb, []string{key}, token).Err()
			}
			return lease.Hold(ttl, renew, release), nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// PutInstance stores rec unless its SOP Instance UID is already indexed.
func (x *Index) PutInstance(ctx context.Context, rec *gateway.InstanceRecord) (*gateway.InstanceRecord, bool, error) {
	res, err := x.write(ctx, "put", rec)
	if err != nil {
		return nil, false, err
	}
	if len(res) == 2 {
		old, err := decodeRecord(res[1])
		if err != nil {
			return nil, false, err
		}
		return old, false, nil
	}
	return nil, true, nil
}

// ReplaceInstance overwrites the record of rec's SOP Instance UID (storing it
// if absent).
func (x *Index) ReplaceInstance(ctx context.Context, rec *gateway.InstanceRecord) error {
	_, err := x.write(ctx, "replace", rec)
	return err
}

func (x *Index) write(ctx context.Context, mode string, rec *gateway.InstanceRecord) ([]any, error) {
	args, err := x.writeArgs(mode, rec)
	if err != nil {
		return nil, err
	}
	res, err := writeScript.Run(ctx, x.rdb, nil, args...).Slice()
	if err != nil {
		return nil, translate(err)
	}
	return res, nil
}

// writeArgs validates rec and builds writeScript's ARGV.
func (x *Index) writeArgs(mode string, rec *gateway.InstanceRecord) ([]any, error) {
	for _, uid := range []string{rec.StudyInstanceUID, rec.SeriesInstanceUID, rec.SOPInstanceUID} {
		if err := gateway.ValidateUID(uid); err != nil {
			return nil, fmt.Errorf("index record: %w", err)
		}
	}
	data, err := recordcodec.Encode(rec)
	if err != nil {
		return nil, err
	}
	sattrs, err := recordcodec.AppendCompact(nil, gateway.StudyAttrs(rec.Metadata))
	if err != nil {
		return nil, fmt.Errorf("encode study attributes: %w", err)
	}
	eattrs, err := recordcodec.AppendCompact(nil, gateway.SeriesAttrs(rec.Metadata))
	if err != nil {
		return nil, fmt.Errorf("encode series attributes: %w", err)
	}
	md := rec.Metadata
	names := gateway.NameKeys(md, dicomcodec.TagPatientName)
	return []any{
		x.prefix, mode, rec.SOPInstanceUID, rec.StudyInstanceUID, rec.SeriesInstanceUID, data,
		indexValue(rec.Modality()), indexValue(rec.SOPClassUID), sattrs, eattrs,
		strconv.FormatInt(gateway.StudyDateKey(md), 10), indexValue(md.String(dicomcodec.TagPatientID)),
		indexValue(md.String(dicomcodec.TagAccessionNumber)), strings.Join(names, "\x01"),
		strings.Join(namePrefixes(gateway.NameGroupKeys(md, dicomcodec.TagPatientName)), "\x01"),
		gateway.MetadataOrder(rec), strings.Join(gateway.NamePhoneticKeys(md, dicomcodec.TagPatientName), "\x01"),
		strconv.FormatInt(rec.Size, 10), strconv.FormatInt(rec.StoredAt.UnixMilli(), 10),
	}, nil
}

// namePrefixLen is the longest name prefix with its own x:np zset.
const namePrefixLen = 3

// namePrefixes returns the hex-encoded 1- to namePrefixLen-byte prefixes of
// the name group keys, once each: the x:np zsets the study is listed in.
func namePrefixes(names []string) []string {
	var out []string
	for _, n := range names {
		for l := 1; l <= min(len(n), namePrefixLen); l++ {
			if p := hex.EncodeToString([]byte(n[:l])); !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// PutInstances puts many records with pipelined script calls (reindex and
// benchmarks): each is PutInstance, records already indexed are left as
// they are.
func (x *Index) PutInstances(ctx context.Context, recs []*gateway.InstanceRecord) error {
	if err := writeScript.Load(ctx, x.rdb).Err(); err != nil {
		return translate(err)
	}
	for chunk := range slices.Chunk(recs, 500) {
		pipe := x.rdb.Pipeline()
		for _, rec := range chunk {
			args, err := x.writeArgs("put", rec)
			if err != nil {
				return err
			}
			writeScript.EvalSha(ctx, pipe, nil, args...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return translate(err)
		}
	}
	return nil
}

// indexValue makes a value safe inside a key and a Lua \1-joined list.
func indexValue(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 {
			return -1
		}
		return r
	}, s)
}

func decodeRecord(v any) (*gateway.InstanceRecord, error) {
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("redis index: record is %T: %w", v, gateway.ErrUnavailable)
	}
	rec, err := recordcodec.Decode([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("redis index: decode record: %v: %w", err, gateway.ErrUnavailable)
	}
	return rec, nil
}

// GetInstance returns the record of sopInstanceUID or ErrNotFound.
func (x *Index) GetInstance(ctx context.Context, sopInstanceUID string) (*gateway.InstanceRecord, error) {
	s, err := x.rdb.HGet(ctx, x.key("i", sopInstanceUID), "rec").Result()
	if err != nil {
		if errors.Is(err, goredis.Nil) {
			return nil, fmt.Errorf("instance %s: %w", sopInstanceUID, gateway.ErrNotFound)
		}
		return nil, translate(err)
	}
	return decodeRecord(s)
}

// DeleteInstance removes the record of sopInstanceUID or returns ErrNotFound.
func (x *Index) DeleteInstance(ctx context.Context, sopInstanceUID string) error {
	n, err := deleteScript.Run(ctx, x.rdb, nil, x.prefix, sopInstanceUID).Int()
	if err != nil {
		return translate(err)
	}
	if n == 0 {
		return fmt.Errorf("instance %s: %w", sopInstanceUID, gateway.ErrNotFound)
	}
	return nil
}

// ListInstances returns a study's (or one series') instances in
// gateway.CompareInstances order, or ErrNotFound when there are none.
func (x *Index) ListInstances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	recs, err := x.instances(ctx, studyUID, seriesUID)
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("no instances in study %s series %q: %w", studyUID, seriesUID, gateway.ErrNotFound)
	}
	return recs, nil
}

// members returns the SOP Instance UIDs of a study (or one series), with
// the series UID of each.
func (x *Index) members(ctx context.Context, studyUID, seriesUID string) (sops, series []string, err error) {
	seriesUIDs := []string{seriesUID}
	if seriesUID == "" {
		if seriesUIDs, err = x.rdb.SMembers(ctx, x.key("ss", studyUID)).Result(); err != nil {
			return nil, nil, translate(err)
		}
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.StringSliceCmd, len(seriesUIDs))
	for i, se := range seriesUIDs {
		cmds[i] = pipe.SMembers(ctx, x.key("ei", studyUID, se))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, nil, translate(err)
	}
	for i, c := range cmds {
		for _, sop := range c.Val() {
			sops = append(sops, sop)
			series = append(series, seriesUIDs[i])
		}
	}
	return sops, series, nil
}

// MetadataEntries reads each instance's order entry (the hash field "ord"
// beside its record) in one pipelined round trip after listing the
// members; an instance indexed before entries existed is prepared from its
// record.
func (x *Index) MetadataEntries(ctx context.Context, studyUID, seriesUID string) ([]gateway.MetadataEntry, error) {
	sops, series, err := x.members(ctx, studyUID, seriesUID)
	if err != nil {
		return nil, err
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.SliceCmd, len(sops))
	for i, sop := range sops {
		cmds[i] = pipe.HMGet(ctx, x.key("i", sop), "ord", "se")
	}
	if len(sops) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, translate(err)
		}
	}
	entries := make([]gateway.MetadataEntry, 0, len(sops))
	for i, c := range cmds {
		v := c.Val()
		if v[1] == nil {
			continue // deleted between the two round trips
		}
		order, _ := v[0].(string)
		if order == "" {
			rec, err := x.GetInstance(ctx, sops[i])
			if errors.Is(err, gateway.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			entries = append(entries, gateway.NewMetadataEntry(rec))
			continue
		}
		e, err := gateway.DecodeMetadataEntry(studyUID, series[i], sops[i], []byte(order))
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("no instances in study %s series %q: %w", studyUID, seriesUID, gateway.ErrNotFound)
	}
	slices.SortFunc(entries, gateway.CompareMetadataEntries)
	return entries, nil
}

func (x *Index) instances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	sops, _, err := x.members(ctx, studyUID, seriesUID)
	if err != nil {
		return nil, err
	}
	if len(sops) == 0 {
		return nil, nil
	}
	pipe := x.rdb.Pipeline()
	gets := make([]*goredis.StringCmd, len(sops))
	for i, sop := range sops {
		gets[i] = pipe.HGet(ctx, x.key("i", sop), "rec")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, translate(err)
	}
	recs := make([]*gateway.InstanceRecord, 0, len(sops))
	for _, g := range gets {
		if g.Err() != nil {
			continue // deleted between the two round trips
		}
		rec, err := decodeRecord(g.Val())
		if err != nil {
			return nil, err
		}
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, gateway.CompareInstances)
	return recs, nil
}

// Search answers a QIDO-RS query with the shared engine (gateway.Search).
// Candidate studies come from the most selective secondary index the query
// allows (study UIDs, patient ID, accession number, patient-name prefix,
// modality, date range), never from a scan of every study key.
func (x *Index) Search(ctx context.Context, q *gateway.Query) (*gateway.SearchResult, error) {
	res, err := gateway.Search(ctx, q, searchSource{x})
	if err != nil && !errors.Is(err, gateway.ErrUnavailable) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return nil, translate(err)
	}
	return res, err
}

type searchSource struct{ x *Index }

// namePrefixIndexed reports whether every study is listed in the x:np zsets
// (x:npok); an index written before they existed searches names with
// x:name. A true answer is remembered: the flag is never removed.
func (x *Index) namePrefixIndexed(ctx context.Context) bool {
	if x.npok.Load() {
		return true
	}
	n, err := x.rdb.Exists(ctx, x.key("x", "npok")).Result()
	if err == nil && n == 1 {
		x.npok.Store(true)
	}
	return n == 1
}

// phoneticIndexed reports whether every study is in the x:ph zsets of its
// name codes (x:phok); remembered like namePrefixIndexed.
func (x *Index) phoneticIndexed(ctx context.Context) bool {
	if x.phok.Load() {
		return true
	}
	n, err := x.rdb.Exists(ctx, x.key("x", "phok")).Result()
	if err == nil && n == 1 {
		x.phok.Store(true)
	}
	return n == 1
}

func (s searchSource) Studies(ctx context.Context, h gateway.IndexHints, fn func([]*gateway.StudySummary) (bool, error)) error {
	x := s.x
	switch {
	case h.StudyUIDs != nil:
		return s.unordered(ctx, h.StudyUIDs, h, fn)
	case h.PatientID != "":
		return s.ordered(ctx, x.key("x", "pid", indexValue(h.PatientID)), h, fn)
	case h.AccessionNumber != "":
		return s.ordered(ctx, x.key("x", "acc", indexValue(h.AccessionNumber)), h, fn)
	case h.NamePrefix != "" && !h.NameWord && x.namePrefixIndexed(ctx):
		// Every study with a name group starting with NamePrefix is in the
		// zset of its first bytes; the engine matches the rest. Fuzzy
		// matching (a prefix of any word) uses x:name below.
		p := h.NamePrefix[:min(len(h.NamePrefix), namePrefixLen)]
		return s.ordered(ctx, x.key("x", "np", hex.EncodeToString([]byte(p))), h, fn)
	case h.NamePhonetic != "" && !x.phoneticIndexed(ctx):
		// Studies indexed before the x:ph zsets existed are in none: walk
		// every study, the engine compares codes.
		return s.ordered(ctx, x.key("x", "date"), h, fn)
	case h.NamePhonetic != "":
		return s.fuzzyName(ctx, h, fn)
	case h.NamePrefix != "":
		// Fuzzy matching with a wildcard first word (a prefix of any word)
		// and name prefixes of an index from before x:np.
		uids, err := s.nameWordPrefix(ctx, h.NamePrefix)
		if err != nil {
			return err
		}
		return s.unordered(ctx, uids, h, fn)
	case len(h.Modalities) == 1:
		return s.ordered(ctx, x.key("x", "mod", indexValue(h.Modalities[0])), h, fn)
	case len(h.Modalities) > 1:
		var b [8]byte
		_, _ = rand.Read(b[:])
		tmp := x.key("tmp", hex.EncodeToString(b[:]))
		keys := make([]string, len(h.Modalities))
		for i, m := range h.Modalities {
			keys[i] = x.key("x", "mod", indexValue(m))
		}
		pipe := x.rdb.TxPipeline()
		pipe.ZUnionStore(ctx, tmp, &goredis.ZStore{Keys: keys, Aggregate: "MAX"})
		pipe.Expire(ctx, tmp, time.Minute)
		if _, err := pipe.Exec(ctx); err != nil {
			return translate(err)
		}
		defer x.rdb.Del(context.WithoutCancel(ctx), tmp)
		return s.ordered(ctx, tmp, h, fn)
	}
	return s.ordered(ctx, x.key("x", "date"), h, fn)
}

// nameWordPrefix returns the studies with a patient-name key (a whole group
// or a word) starting with prefix, from x:name, in no order.
func (s searchSource) nameWordPrefix(ctx context.Context, prefix string) ([]string, error) {
	members, err := s.x.rdb.ZRangeByLex(ctx, s.x.key("x", "name"), &goredis.ZRangeBy{
		Min: "[" + prefix, Max: "[" + prefix + "\xff",
	}).Result()
	if err != nil {
		return nil, translate(err)
	}
	seen := make(map[string]bool, len(members))
	uids := make([]string, 0, len(members))
	for _, m := range members {
		_, uid, ok := strings.Cut(m, "\x00")
		if ok && !seen[uid] {
			seen[uid] = true
			uids = append(uids, uid)
		}
	}
	return uids, nil
}

// fuzzyName walks the studies whose first name word matches the fuzzy
// query's first word: by Soundex code (the x:ph zset, already in date
// order) or by prefix (x:name, usually few for a whole word). The prefix
// matches are scored by date (ZINTERSTORE with x:date) and merged with the
// code's zset in a temporary zset, walked newest first as far as the page
// needs, so a common code costs no more than its page.
func (s searchSource) fuzzyName(ctx context.Context, h gateway.IndexHints, fn func([]*gateway.StudySummary) (bool, error)) error {
	x := s.x
	code := x.key("x", "ph", h.NamePhonetic)
	uids, err := s.nameWordPrefix(ctx, h.NamePrefix)
	if err != nil {
		return err
	}
	if len(uids) == 0 {
		return s.ordered(ctx, code, h, fn)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	tmp := x.key("tmp", hex.EncodeToString(b[:]))
	set, dated := tmp+":set", tmp+":dated"
	pipe := x.rdb.TxPipeline()
	for chunk := range slices.Chunk(uids, 1000) {
		members := make([]any, len(chunk))
		for i, u := range chunk {
			members[i] = u
		}
		pipe.SAdd(ctx, set, members...)
	}
	pipe.ZInterStore(ctx, dated, &goredis.ZStore{Keys: []string{x.key("x", "date"), set}, Weights: []float64{1, 0}})
	pipe.ZUnionStore(ctx, tmp, &goredis.ZStore{Keys: []string{code, dated}, Aggregate: "MAX"})
	pipe.Del(ctx, set, dated)
	pipe.Expire(ctx, tmp, time.Minute)
	if _, err := pipe.Exec(ctx); err != nil {
		return translate(err)
	}
	defer x.rdb.Del(context.WithoutCancel(ctx), tmp)
	return s.ordered(ctx, tmp, h, fn)
}

// ordered walks a zset of study UIDs scored by StudyDate, newest first (ties
// by UID descending, as gateway.CompareStudies), in growing batches.
func (s searchSource) ordered(ctx context.Context, key string, h gateway.IndexHints, fn func([]*gateway.StudySummary) (bool, error)) error {
	by := &goredis.ZRangeBy{Max: "+inf", Min: "-inf"}
	if h.DateHigh > 0 {
		by.Max = strconv.FormatInt(h.DateHigh, 10)
	}
	if h.HasDate {
		by.Min = strconv.FormatInt(max(h.DateLow, 1), 10)
	}
	count := int64(64)
	if h.Want > 0 {
		count = int64(min(max(h.Want, 16), 1024))
	}
	for {
		by.Count = count
		uids, err := s.x.rdb.ZRevRangeByScore(ctx, key, by).Result()
		if err != nil {
			return translate(err)
		}
		studies, err := s.x.studies(ctx, uids)
		if err != nil {
			return err
		}
		if len(studies) > 0 {
			more, err := fn(studies)
			if err != nil || !more {
				return err
			}
		}
		if int64(len(uids)) < count {
			return nil
		}
		by.Offset += count
		count = min(count*2, 1024)
	}
}

// unordered sorts uids into gateway.CompareStudies order by their date
// scores (one pipeline of ZMSCOREs of 1,000, no summary decoded), then fetches the
// summaries batch by batch, only as far as the search reads.
func (s searchSource) unordered(ctx context.Context, uids []string, h gateway.IndexHints, fn func([]*gateway.StudySummary) (bool, error)) error {
	type cand struct {
		uid  string
		date float64
	}
	cands := make([]cand, 0, len(uids))
	if len(uids) > 0 {
		pipe := s.x.rdb.Pipeline()
		var cmds []*goredis.FloatSliceCmd
		for chunk := range slices.Chunk(uids, 1000) {
			cmds = append(cmds, pipe.ZMScore(ctx, s.x.key("x", "date"), chunk...))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return translate(err)
		}
		for i, c := range cmds {
			scores := c.Val()
			for j, uid := range uids[i*1000 : min((i+1)*1000, len(uids))] {
				if j < len(scores) {
					cands = append(cands, cand{uid, scores[j]})
				}
			}
		}
	}
	slices.SortFunc(cands, func(a, b cand) int {
		if c := cmp.Compare(b.date, a.date); c != 0 {
			return c
		}
		return strings.Compare(b.uid, a.uid)
	})
	size := 64
	if h.Want > 0 {
		size = min(max(h.Want, 16), 1024)
	}
	for len(cands) > 0 {
		n := min(size, len(cands))
		batch := make([]string, n)
		for i := range batch {
			batch[i] = cands[i].uid
		}
		cands = cands[n:]
		studies, err := s.x.studies(ctx, batch)
		if err != nil {
			return err
		}
		slices.SortFunc(studies, gateway.CompareStudies)
		if len(studies) > 0 {
			more, err := fn(studies)
			if err != nil || !more {
				return err
			}
		}
		size = min(size*2, 1024)
	}
	return nil
}

// studies reads the summaries of uids in one pipeline, skipping any deleted
// meanwhile.
func (x *Index) studies(ctx context.Context, uids []string) ([]*gateway.StudySummary, error) {
	if len(uids) == 0 {
		return nil, nil
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.MapStringStringCmd, len(uids))
	for i, uid := range uids {
		cmds[i] = pipe.HGetAll(ctx, x.key("s", uid))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, translate(err)
	}
	out := make([]*gateway.StudySummary, 0, len(uids))
	for i, c := range cmds {
		h := c.Val()
		attrs, err := decodeAttrs(h)
		if err != nil {
			return nil, fmt.Errorf("redis index: decode study %s: %v: %w", uids[i], err, gateway.ErrUnavailable)
		}
		if attrs == nil {
			continue // deleted
		}
		st := &gateway.StudySummary{StudyInstanceUID: uids[i], Attrs: attrs, Modalities: map[string]int{}, SOPClasses: map[string]int{}}
		st.Instances, _ = strconv.Atoi(h["n"])
		st.Series, _ = strconv.Atoi(h["ns"])
		for f, v := range h {
			n, _ := strconv.Atoi(v)
			if m, ok := strings.CutPrefix(f, "m:"); ok && n > 0 {
				st.Modalities[m] = n
			} else if c, ok := strings.CutPrefix(f, "c:"); ok && n > 0 {
				st.SOPClasses[c] = n
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// decodeAttrs returns the attributes of a study or series hash: its compact
// ca field, or the attrs JSON of a hash written before ca existed; nil when
// the hash is gone.
func decodeAttrs(h map[string]string) (dicomcodec.Dataset, error) {
	if ca := h["ca"]; ca != "" {
		return recordcodec.DecodeCompact(ca)
	}
	if h["attrs"] == "" {
		return nil, nil
	}
	var d dicomcodec.Dataset
	if err := json.Unmarshal([]byte(h["attrs"]), &d); err != nil {
		return nil, err
	}
	if d == nil {
		d = dicomcodec.Dataset{}
	}
	return d, nil
}

func (s searchSource) Series(ctx context.Context, studyUID string) ([]*gateway.SeriesSummary, error) {
	x := s.x
	series, err := x.rdb.SMembers(ctx, x.key("ss", studyUID)).Result()
	if err != nil {
		return nil, translate(err)
	}
	pipe := x.rdb.Pipeline()
	cmds := make([]*goredis.MapStringStringCmd, len(series))
	for i, se := range series {
		cmds[i] = pipe.HGetAll(ctx, x.key("e", studyUID, se))
	}
	if len(series) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, translate(err)
		}
	}
	out := make([]*gateway.SeriesSummary, 0, len(series))
	for i, c := range cmds {
		attrs, err := decodeAttrs(c.Val())
		if err != nil {
			return nil, fmt.Errorf("redis index: decode series %s: %v: %w", series[i], err, gateway.ErrUnavailable)
		}
		if attrs == nil {
			continue
		}
		h := c.Val()
		se := &gateway.SeriesSummary{StudyInstanceUID: studyUID, SeriesInstanceUID: series[i], Attrs: attrs}
		se.Instances, _ = strconv.Atoi(h["n"])
		out = append(out, se)
	}
	return out, nil
}

func (s searchSource) Instances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	return s.x.instances(ctx, studyUID, seriesUID)
}
