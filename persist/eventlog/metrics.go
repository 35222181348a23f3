package eventlog

import "github.com/VictoriaMetrics/metrics"

// Process-wide metrics of the event log (one log per relay process).
var (
	syncDuration           = metrics.NewHistogram(`relay_eventlog_sync_duration_seconds`)
	appendedRecords        = metrics.NewCounter(`relay_eventlog_appended_records_total`)
	appendedBytes          = metrics.NewCounter(`relay_eventlog_appended_bytes_total`)
	recoveryTruncatedBytes = metrics.NewCounter(`relay_eventlog_recovery_truncated_bytes_total`)
	takedownRecords        = metrics.NewCounter(`relay_eventlog_takedown_records_total`)
	// Segments deleted by Trim; every deletion has its reason.
	removedSegmentsAge  = metrics.NewCounter(`relay_eventlog_segments_removed_total{reason="age"}`)
	removedSegmentsSize = metrics.NewCounter(`relay_eventlog_segments_removed_total{reason="size"}`)
)
