package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	lexutil "github.com/bluesky-social/indigo/lex/util"
	cbg "github.com/whyrusleeping/cbor-gen"

	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/persist/meta"
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

// Sequencer errors.
var (
	// ErrSequencerClosed is returned by Submit after Close, and given to
	// the Done of events queued when the sequencer stopped.
	ErrSequencerClosed = errors.New("relay: sequencer closed")
	// ErrSequencerFailed is returned by Submit after a storage failure, and
	// given to the Done of every event that will therefore never be durable.
	ErrSequencerFailed = errors.New("relay: sequencer stopped after a storage failure")
	// ErrUnencodable is given to the Done of an event that could not be
	// encoded: it is dropped (counted as encode_error).
	ErrUnencodable = errors.New("relay: event cannot be encoded")
)

// Outgoing is an accepted event handed to the sequencer: the body gets the
// relay's seq, is encoded once, appended with its derived state, fsynced,
// and only then published.
type Outgoing struct {
	Kind uint32
	UID  uint64
	// Body is one of *comatproto.SyncSubscribeRepos_Commit, _Sync, _Identity
	// or _Account; its Seq field is overwritten.
	Body cbg.CBORMarshaler
	// HostID, when not 0, is the host the event came from, UpstreamSeq its
	// seq there, and Floor the host's safe cursor when it was submitted.
	// They go into the record, so a restart knows where the host resumes.
	HostID             uint64
	UpstreamSeq, Floor int64
	// Repo is the repo head the event moves the account to; Status the
	// account status it sets. Both are applied to the derived state once
	// the event is durable, before it is published.
	Repo   *meta.RepoState
	Status *meta.StatusChange
	// Done, if set, runs on the sequencer goroutine and must be quick (no
	// I/O): with the event's seq once it is durable, or with seq 0 and why
	// it never will be (ErrUnencodable, ErrSequencerFailed,
	// ErrSequencerClosed).
	Done func(seq int64, err error)
}

func (ev *Outgoing) done(seq int64, err error) {
	if ev.Done != nil {
		ev.Done(seq, err)
	}
}

// Sequencer is the single owner of seq assignment. One goroutine batches
// accepted events, encodes each frame once, appends the batch to the event
// log, fsyncs it (group commit), marks the events done, applies their
// derived state, publishes to the ring and wakes the broadcaster. An event
// is never visible to a consumer before its fsync, nor before the state it
// derives is readable through the derived-state overlay.
type Sequencer struct {
	log     *eventlog.Log
	ring    *Ring
	derived *derivedState
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
	failed atomic.Pointer[error] // set once by fatal
}

// NewSequencer starts the sequencer goroutine. notify is called after each
// published batch.
func NewSequencer(log *eventlog.Log, ring *Ring, derived *derivedState, m *Metrics, interval time.Duration, notify func(), logger *slog.Logger) *Sequencer {
	s := &Sequencer{
		log: log, ring: ring, derived: derived, notify: notify, logger: logger, metrics: m, interval: interval,
		in: make(chan Outgoing, sequencerQueue), done: make(chan struct{}),
	}
	ring.Reset(log.LastSeq())
	go s.run()
	return s
}

// Submit queues an accepted event, blocking while the queue is full (see
// sequencerQueue) or until ctx ends. A failed sequencer refuses at once.
func (s *Sequencer) Submit(ctx context.Context, ev Outgoing) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrSequencerClosed
	}
	if s.failed.Load() != nil {
		return ErrSequencerFailed
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

// Err is the storage failure that stopped the sequencer, or nil.
func (s *Sequencer) Err() error {
	if e := s.failed.Load(); e != nil {
		return *e
	}
	return nil
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
	return s.Err()
}

// QueueLen is the number of events waiting for a seq.
func (s *Sequencer) QueueLen() int { return len(s.in) }

func (s *Sequencer) run() {
	defer close(s.done)
	var (
		batch   []Outgoing
		recs    []eventlog.Record
		entries []*ringEntry
		effects []effect
		seqs    []int64 // seqs[i] is batch[i]'s seq (0 when it failed to encode)
		metaBuf []byte
		metaEnd []int // metaBuf[metaEnd[i-1]:metaEnd[i]] is recs[i]'s meta
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
		recs, entries, effects, seqs = recs[:0], entries[:0], effects[:0], seqs[:0]
		metaBuf, metaEnd = metaBuf[:0], metaEnd[:0]
		seq := s.log.LastSeq()
		for i := range batch {
			ev := &batch[i]
			t, err := setSeq(ev.Body, seq+1)
			if err == nil {
				payload.Reset()
				payload.Write(wsframe.AppendEventHeader(payload.AvailableBuffer(), t))
				err = ev.Body.MarshalCBOR(&payload)
			}
			if err != nil {
				s.logger.Error("sequencer: unencodable event", "err", err, "type", t)
				s.metrics.Dropped("encode_error").Inc()
				seqs = append(seqs, 0)
				continue
			}
			seq++
			seqs = append(seqs, seq)
			m := recordMeta{hostID: ev.HostID, useq: ev.UpstreamSeq, floor: ev.Floor, repo: ev.Repo, status: ev.Status}
			metaBuf = m.append(metaBuf)
			metaEnd = append(metaEnd, len(metaBuf))
			frame := wsframe.Compile(payload.Bytes())
			body := frame[len(frame)-payload.Len():]
			recs = append(recs, eventlog.Record{Kind: ev.Kind, UID: ev.UID, Seq: seq, Payload: body})
			entries = append(entries, &ringEntry{seq: seq, uid: ev.UID, frame: frame})
			effects = append(effects, effect{repo: ev.Repo, status: ev.Status})
			s.metrics.EventsOut(t).Inc()
		}
		prev := 0
		for i := range recs {
			recs[i].Meta = metaBuf[prev:metaEnd[i]]
			prev = metaEnd[i]
		}
		if len(recs) > 0 {
			if err := s.log.Append(recs); err != nil {
				s.fatal(fmt.Errorf("event log append: %w", err), batch)
				return
			}
			syncStart := time.Now()
			if err := s.log.Sync(); err != nil {
				s.fatal(fmt.Errorf("event log fsync: %w", err), batch)
				return
			}
			s.metrics.fsyncSeconds.UpdateDuration(syncStart)
		}
		// Durable. Order matters: hosts first (their cursors pass these
		// events), then the derived state, then consumers. A checkpoint
		// that sees the derived state thus also sees the host cursors.
		for i := range batch {
			if seqs[i] == 0 {
				batch[i].done(0, ErrUnencodable)
			} else {
				batch[i].done(seqs[i], nil)
			}
		}
		if len(recs) == 0 {
			continue
		}
		s.derived.apply(effects, seq)
		s.ring.Publish(entries)
		clear(batch) // drop references to bodies and callbacks
		s.metrics.sequencerBatch.Update(float64(len(recs)))
		s.metrics.sequenceSeconds.UpdateDuration(start)
		s.notify()
	}
}

// fatal records an unrecoverable storage error: nothing more is accepted,
// so nothing is broadcast that is not durable. The batch in hand and every
// event still queued are told they will never be durable, so their hosts
// rewind to their cursors instead of waiting for them forever.
func (s *Sequencer) fatal(err error, batch []Outgoing) {
	s.logger.Error("sequencer stopped: storage failure", "err", err)
	s.failed.Store(&err)
	s.metrics.sequencerFailed.Set(1)
	for i := range batch {
		batch[i].done(0, ErrSequencerFailed)
	}
	// Submit refuses from now on; drain what was queued until Close.
	for ev := range s.in {
		ev.done(0, ErrSequencerFailed)
	}
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
