package perf

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"
)

// ReplayStats is one consumer reading a target's log from a cursor up to
// a known head.
type ReplayStats struct {
	Cursor   int64         `json:"cursor"`
	Head     int64         `json:"head"`
	Frames   int64         `json:"frames"`
	Bytes    int64         `json:"bytes"`
	Duration time.Duration `json:"duration_ns"`
	// FramesPerSec and MBPerSec are over Duration (MB = 10^6 bytes).
	FramesPerSec float64 `json:"frames_per_sec"`
	MBPerSec     float64 `json:"mb_per_sec"`
	Gaps         int64   `json:"gaps"`
	Duplicates   int64   `json:"duplicates"`
	// Complete: the consumer reached head before the timeout.
	Complete bool `json:"complete"`
}

// DefaultReplayReadBuffer is the replaying consumer's read buffer: large,
// so the consumer's syscalls do not limit what is measured.
const DefaultReplayReadBuffer = 256 << 10

// ReplayOptions configures MeasureReplay.
type ReplayOptions struct {
	// URL is the subscribeRepos URL (without cursor); TLS for wss://.
	URL string
	TLS *tls.Config
	// Cursor to replay from, and Head, the seq to read up to.
	Cursor, Head int64
	// Timeout bounds the measurement.
	Timeout time.Duration
	// ReadBufferSize of the consumer (default DefaultReplayReadBuffer).
	ReadBufferSize int
}

// MeasureReplay subscribes one consumer with opts.Cursor and times it
// from the dial until it has read every event up to opts.Head (the time
// includes the handshake). It returns what it measured even when the
// stream ends or the timeout passes first (Complete is then false).
func MeasureReplay(ctx context.Context, opts ReplayOptions) (*ReplayStats, error) {
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if opts.ReadBufferSize <= 0 {
		opts.ReadBufferSize = DefaultReplayReadBuffer
	}
	cursor, head := opts.Cursor, opts.Head
	start := time.Now()
	f, err := StartFleet(ctx, FleetOptions{URL: opts.URL, Consumers: 1, Cursor: cursor, TLS: opts.TLS, ReadBufferSize: opts.ReadBufferSize})
	if err != nil {
		return nil, fmt.Errorf("perf: replay consumer: %w", err)
	}
	defer f.Close()
	const poll = 2 * time.Millisecond
	t := time.NewTicker(poll)
	defer t.Stop()
	rs := &ReplayStats{Cursor: cursor, Head: head}
	for {
		st := f.Stats()
		done := st.MaxLastSeq >= head
		if done || st.Ended > 0 || ctx.Err() != nil {
			rs.Duration = time.Since(start)
			rs.Frames, rs.Bytes = st.Frames, st.Bytes
			rs.Gaps, rs.Duplicates = st.Gaps, st.Duplicates
			rs.Complete = done
			if s := rs.Duration.Seconds(); s > 0 {
				rs.FramesPerSec = float64(rs.Frames) / s
				rs.MBPerSec = float64(rs.Bytes) / 1e6 / s
			}
			return rs, nil
		}
		<-t.C
	}
}
