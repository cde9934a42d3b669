package gateway

// Log attribute keys (log/slog). UIDs and transfer IDs may be logged; patient
// names, IDs and birth dates never are.
const (
	LogKeyRequestID  = "request_id"
	LogKeyStudyUID   = "study_uid"
	LogKeySeriesUID  = "series_uid"
	LogKeySOPUID     = "sop_instance_uid"
	LogKeyTransferID = "transfer_id"
	LogKeyPeer       = "peer"
	LogKeyBackend    = "backend"
	LogKeyError      = "error"
	LogKeyActor      = "actor"
)

// Secret is a string that never prints: tokens, passwords, keys.
type Secret string

func (Secret) String() string   { return "[redacted]" }
func (Secret) GoString() string { return "[redacted]" }

// Reveal returns the secret's value, for the one place that must send it.
func (s Secret) Reveal() string { return string(s) }
