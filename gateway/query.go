package gateway

// QueryLevel is the QIDO-RS level searched.
type QueryLevel int

const (
	LevelStudy QueryLevel = iota
	LevelSeries
	LevelInstance
)

// Query is a parsed QIDO-RS search. (Owned by the QIDO work: extend freely.)
type Query struct {
	Level             QueryLevel
	StudyInstanceUID  string // scope from the URL path, "" = any
	SeriesInstanceUID string // scope from the URL path, "" = any
	Limit, Offset     int
}

// SearchResult holds one page of matches, each the DICOM JSON of a study,
// series or instance with the attributes the level returns.
type SearchResult struct {
	Items []Dataset
	// More is true when matches beyond Offset+len(Items) exist.
	More bool
}
