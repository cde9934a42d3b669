package redis

import "time"

// SetStudyIndexEveryForTest changes how often a List by study indexes the
// transfers written since the last time, until the returned function
// restores it.
func SetStudyIndexEveryForTest(d time.Duration) (restore func()) {
	old := studyIndexEvery
	studyIndexEvery = d
	return func() { studyIndexEvery = old }
}

// StudyKeyForTest returns the key of parts in the shard of studyUID.
func StudyKeyForTest(x *Index, studyUID string, parts ...string) string {
	return x.studyKey(studyUID, parts...)
}
