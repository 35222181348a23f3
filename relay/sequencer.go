package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	lexutil "github.com/bluesky-social/indigo/lex/util"
	cbg "github.com/whyrusleeping/cbor-gen"

	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/wsframe"
)

// Event kinds stored in the event log's record header.
const (
	KindCommit   uint32 = 1
	KindSync     uint32 = 2
	KindIdentity uint32 = 3
	KindAccount  uint32 = 4
)

// Sequencer limits.
const (
	// sequencerQueue bounds accepted events waiting for a seq. When full,
	// Submit blocks the validation worker, which in turn stops reading its
	// hosts: backpressure, never a drop.
	sequencerQueue = 8192
	// maxBatchEvents and maxBatchBytes bound one group commit.
	maxBatchEvents = 2048
	maxBatchBytes  = 8 << 20
)

// ErrSequencerClosed is returned by Submit after Close.
var ErrSequencerClosed = errors.New("relay: sequencer closed")

// Outgoing is an accepted event handed to the sequencer: the body gets the
// relay's seq, is encoded once, appended, fsynced, and only then published.
type Outgoing struct {
	Kind uint32
	UID  uint64
	// Body is one of *comatproto.SyncSubscribeRepos_Commit, _Sync, _Identity
	// or _Account; its Seq field is overwritten.
	Body cbg.CBORMarshaler
	// Durable, if set, runs on the sequencer goroutine once the event is
	// durable, with its seq. It must be quick (no I/O).
	Durable func(seq int64)
}

// Sequencer is the single owner of seq assignment. One goroutine batches
// accepted events, encodes each frame once, appends the batch to the event
// log, fsyncs it (group commit), publishes to the ring and wakes the
// broadcaster. An event is never visible to a consumer before its fsync.
type Sequencer struct {
	log     *eventlog.Log
	ring    *Ring
	notify  func()
	logger  *slog.Logger
	metrics *Metrics
	// interval is an optional pause before each group commit so more
	// events share one fsync (0: sync as soon as the previous one ended).
	interval time.Duration

	in     chan Outgoing
	mu     sync.RWMutex // guards closed against Submit racing Close
	closed bool
	done   chan struct{}
	err    error
}

// NewSequencer starts the sequencer goroutine. notify is called after each
// published batch.
func NewSequencer(log *eventlog.Log, ring *Ring, m *Metrics, interval time.Duration, notify func(), logger *slog.Logger) *Sequencer {
	s := &Sequencer{
		log: log, ring: ring, notify: notify, logger: logger, metrics: m, interval: interval,
		in: make(chan Outgoing, sequencerQueue), done: make(chan struct{}),
	}
	ring.Reset(log.LastSeq())
	go s.run()
	return s
}

// Submit queues an accepted event, blocking while the queue is full (see
// sequencerQueue) or until ctx ends.
func (s *Sequencer) Submit(ctx context.Context, ev Outgoing) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrSequencerClosed
	}
	select {
	case s.in <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return ErrSequencerClosed
	}
}

// Close stops accepting, sequences and syncs everything already queued, and
// waits for the goroutine to end.
func (s *Sequencer) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.in)
	}
	s.mu.Unlock()
	<-s.done
	return s.err
}

// QueueLen is the number of events waiting for a seq.
func (s *Sequencer) QueueLen() int { return len(s.in) }

func (s *Sequencer) run() {
	defer close(s.done)
	var (
		batch   []Outgoing
		recs    []eventlog.Record
		entries []*ringEntry
		seqs    []int64 // seqs[i] is batch[i]'s seq (unused when it failed)
		payload bytes.Buffer
	)
	for {
		ev, ok := <-s.in
		if !ok {
			return
		}
		if s.interval > 0 {
			time.Sleep(s.interval)
		}
		batch = append(batch[:0], ev)
		size := approxFrameSize(ev.Body)
	drain:
		for len(batch) < maxBatchEvents && size < maxBatchBytes {
			select {
			case ev, ok := <-s.in:
				if !ok {
					break drain
				}
				batch = append(batch, ev)
				size += approxFrameSize(ev.Body)
			default:
				break drain
			}
		}
		start := time.Now()
		recs, entries, seqs = recs[:0], entries[:0], seqs[:0]
		seq := s.log.LastSeq()
		for i := range batch {
			seq++
			seqs = append(seqs, seq)
			ev := &batch[i]
			t, err := setSeq(ev.Body, seq)
			if err != nil {
				s.logger.Error("sequencer: unencodable event", "err", err)
				s.metrics.Dropped("encode_error").Inc()
				seq--
				ev.Durable = nil
				continue
			}
			payload.Reset()
			payload.Write(wsframe.AppendEventHeader(payload.AvailableBuffer(), t))
			if err := ev.Body.MarshalCBOR(&payload); err != nil {
				s.logger.Error("sequencer: encode failed", "err", err, "type", t)
				s.metrics.Dropped("encode_error").Inc()
				seq--
				ev.Durable = nil
				continue
			}
			frame := wsframe.Compile(payload.Bytes())
			body := frame[len(frame)-payload.Len():]
			recs = append(recs, eventlog.Record{Kind: ev.Kind, UID: ev.UID, Seq: seq, Payload: body})
			entries = append(entries, &ringEntry{seq: seq, uid: ev.UID, frame: frame})
			s.metrics.EventsOut(t).Inc()
		}
		if len(recs) == 0 {
			continue
		}
		if err := s.log.Append(recs); err != nil {
			s.fatal(fmt.Errorf("event log append: %w", err))
			return
		}
		syncStart := time.Now()
		if err := s.log.Sync(); err != nil {
			s.fatal(fmt.Errorf("event log fsync: %w", err))
			return
		}
		s.metrics.fsyncSeconds.UpdateDuration(syncStart)
		s.ring.Publish(entries)
		// Events that failed to encode had their callback cleared.
		for i := range batch {
			if batch[i].Durable != nil {
				batch[i].Durable(seqs[i])
			}
		}
		s.metrics.sequencerBatch.Update(float64(len(recs)))
		s.metrics.sequenceSeconds.UpdateDuration(start)
		s.notify()
	}
}

// fatal records an unrecoverable storage error: nothing more is accepted,
// so nothing is broadcast that is not durable.
func (s *Sequencer) fatal(err error) {
	s.logger.Error("sequencer stopped: storage failure", "err", err)
	s.err = err
	s.metrics.sequencerFailed.Set(1)
	// Unblock submitters: they get ErrSequencerClosed through done.
}

// approxFrameSize estimates an event's encoded size from its bulk (CAR
// blocks, ops) without encoding it, to bound a group commit's bytes.
func approxFrameSize(body cbg.CBORMarshaler) int {
	const fixed = 256 // header, DID, rev, time, CIDs
	switch b := body.(type) {
	case *comatproto.SyncSubscribeRepos_Commit:
		return fixed + len(b.Blocks) + 128*len(b.Ops)
	case *comatproto.SyncSubscribeRepos_Sync:
		return fixed + len(b.Blocks)
	}
	return fixed
}

// setSeq sets the relay seq on an outgoing body and returns its frame type.
func setSeq(body cbg.CBORMarshaler, seq int64) (string, error) {
	switch b := body.(type) {
	case *comatproto.SyncSubscribeRepos_Commit:
		b.Seq = seq
		if b.Blobs == nil {
			b.Blobs = []lexutil.LexLink{}
		}
		if b.Ops == nil {
			b.Ops = []*comatproto.SyncSubscribeRepos_RepoOp{}
		}
		return "#commit", nil
	case *comatproto.SyncSubscribeRepos_Sync:
		b.Seq = seq
		return "#sync", nil
	case *comatproto.SyncSubscribeRepos_Identity:
		b.Seq = seq
		return "#identity", nil
	case *comatproto.SyncSubscribeRepos_Account:
		b.Seq = seq
		return "#account", nil
	default:
		return "", fmt.Errorf("relay: cannot sequence %T", body)
	}
}
