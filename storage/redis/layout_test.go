package redis

// key returns the key of parts in the single-server layout's one shard,
// where indexes written by earlier versions live (the legacy tests write
// their old forms there).
func (x *Index) key(parts ...string) string { return x.skey(0, parts...) }

// StudyKey returns the key of parts in the shard of study: the external
// tests that write the old forms of an index find its keys on either layout.
func (x *Index) StudyKey(study string, parts ...string) string { return x.studyKey(study, parts...) }
