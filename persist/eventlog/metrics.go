package eventlog

import "github.com/VictoriaMetrics/metrics"

// logMetrics are the event log's metrics, created once in the set of
// Options.Metrics (the relay's), like every component's.
type logMetrics struct {
	syncDuration           *metrics.Histogram
	appendedRecords        *metrics.Counter
	appendedBytes          *metrics.Counter
	recoveryTruncatedBytes *metrics.Counter
	takedownRecords        *metrics.Counter
	// Segments deleted by Trim; every deletion has its reason.
	removedSegmentsAge  *metrics.Counter
	removedSegmentsSize *metrics.Counter
}

func newLogMetrics(s *metrics.Set) logMetrics {
	return logMetrics{
		syncDuration:           s.NewHistogram(`relay_eventlog_sync_duration_seconds`),
		appendedRecords:        s.NewCounter(`relay_eventlog_appended_records_total`),
		appendedBytes:          s.NewCounter(`relay_eventlog_appended_bytes_total`),
		recoveryTruncatedBytes: s.NewCounter(`relay_eventlog_recovery_truncated_bytes_total`),
		takedownRecords:        s.NewCounter(`relay_eventlog_takedown_records_total`),
		removedSegmentsAge:     s.NewCounter(`relay_eventlog_segments_removed_total{reason="age"}`),
		removedSegmentsSize:    s.NewCounter(`relay_eventlog_segments_removed_total{reason="size"}`),
	}
}
