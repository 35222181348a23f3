package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	cbg "github.com/whyrusleeping/cbor-gen"

	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/persist/meta"
	"github.com/relay/relay/persist/meta/pebblestore"
)

func TestRecordMetaRoundTrip(t *testing.T) {
	cases := []recordMeta{
		{},
		{hostID: 7, useq: 1 << 40, floor: 12},
		{hostID: 1, useq: 5, floor: 4, repo: &meta.RepoState{UID: 9, Rev: "3l2abc", CommitCID: "bafycommit", DataCID: "bafydata"}},
		{hostID: 2, useq: 3, floor: 0, status: &meta.StatusChange{UID: 9, Status: meta.AccountActive, UpstreamStatus: meta.AccountDeactivated}},
		{status: &meta.StatusChange{UID: 1 << 50, Status: meta.AccountTakendown}},
	}
	for _, m := range cases {
		b := m.append(nil)
		got, err := decodeRecordMeta(b, 9)
		if err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip: got %+v, want %+v", got, m)
		}
		// Every truncation and a trailing byte are refused, never misread.
		for i := 0; i < len(b); i++ {
			if _, err := decodeRecordMeta(b[:i], 9); !errors.Is(err, ErrBadRecordMeta) {
				t.Fatalf("%+v cut at %d: %v", m, i, err)
			}
		}
		if _, err := decodeRecordMeta(append(slices.Clone(b), 0), 9); !errors.Is(err, ErrBadRecordMeta) {
			t.Fatalf("%+v with a trailing byte: %v", m, err)
		}
	}
	if _, err := decodeRecordMeta([]byte{metaVersion, 0x80}, 1); !errors.Is(err, ErrBadRecordMeta) {
		t.Fatalf("unknown flag accepted: %v", err)
	}
}

func TestResumeRoundTrip(t *testing.T) {
	in := map[uint64]hostResume{
		1: {cursor: 10, done: []int64{12, 13, 20}, known: true},
		2: {cursor: 0, known: true},         // known at 0: kept
		3: {cursor: 55, known: true},        // a plain cursor: the host row has it
		4: {cursor: 0, done: []int64{1, 2}}, // done seqs imply known
		5: {cursor: 0},                      // nothing: not kept
	}
	at := time.Unix(1_800_000_000, 0)
	out, gotAt, err := decodeResume(encodeResume(in, at))
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]hostResume{
		1: {cursor: 10, done: []int64{12, 13, 20}, known: true},
		2: {cursor: 0, known: true},
		4: {cursor: 0, done: []int64{1, 2}, known: true},
	}
	if !gotAt.Equal(at) {
		t.Fatalf("resume time %v, want %v", gotAt, at)
	}
	if !reflect.DeepEqual(out, want) {
		t.Fatalf("got %+v, want %+v", out, want)
	}
	if _, _, err := decodeResume([]byte{1, 5, 1}); err == nil {
		t.Fatal("truncated resume detail accepted")
	}
}

func TestSeqTrackerResumeSkipsDurable(t *testing.T) {
	var tr seqTracker
	tr.resume(10, []int64{12, 13, 15})
	want := []struct {
		seq int64
		v   admission
	}{{9, admitDuplicate}, {11, admitted}, {12, admitDurable}, {13, admitDurable}, {14, admitted}, {15, admitDurable}, {16, admitted}}
	for _, w := range want {
		if v, _ := tr.admit(w.seq, 1); v != w.v {
			t.Fatalf("admit(%d) = %v, want %v", w.seq, v, w.v)
		}
	}
	// 11, 14 and 16 are in flight; the durable ones do not hold the cursor.
	if c := tr.cursor(); c != 10 {
		t.Fatalf("cursor %d, want 10", c)
	}
	tr.done(11)
	if c := tr.cursor(); c != 13 {
		t.Fatalf("cursor %d, want 13", c)
	}
	tr.done(16)
	c, above := tr.resumePoint()
	if c != 13 || !slices.Equal(above, []int64{15, 16}) {
		t.Fatalf("resumePoint = %d %v, want 13 [15 16]", c, above)
	}
	// A host that never resends a durable seq: it is forgotten.
	var tr2 seqTracker
	tr2.resume(0, []int64{3})
	if v, _ := tr2.admit(5, 1); v != admitted {
		t.Fatalf("admit(5) = %v", v)
	}
	if _, above := tr2.resumePoint(); len(above) != 0 {
		t.Fatalf("skipped seq kept: %v", above)
	}
}

func TestSeqTrackerRewind(t *testing.T) {
	var tr seqTracker
	tr.reset(100)
	for s := int64(101); s <= 105; s++ {
		tr.admit(s, 10)
	}
	tr.done(101)
	tr.done(103)
	tr.rewind() // 102, 104, 105 will never be durable
	if c, last := tr.cursor(), tr.lastSeq(); c != 101 || last != 101 {
		t.Fatalf("after rewind cursor %d last %d, want 101 101", c, last)
	}
	if tr.inflight() != 0 {
		t.Fatalf("in flight after rewind: %d", tr.inflight())
	}
	tr.done(104) // late: ignored
	// The host resends from 102: 103 is already durable.
	if v, _ := tr.admit(102, 1); v != admitted {
		t.Fatalf("admit(102) = %v", v)
	}
	if v, _ := tr.admit(103, 1); v != admitDurable {
		t.Fatalf("admit(103) = %v, want durable", v)
	}
}

// The overlay blocks a full sequencer until a checkpoint frees room, and a
// failed checkpoint keeps its effects (merged under newer ones).
func TestDerivedStateBoundAndRetry(t *testing.T) {
	d := newDerivedState(0)
	effects := make([]effect, maxDerivedPending)
	for i := range effects {
		effects[i] = effect{repo: &meta.RepoState{UID: uint64(i + 1), Rev: "a"}}
	}
	d.apply(effects, 1)
	applied := make(chan struct{})
	go func() {
		d.apply([]effect{{repo: &meta.RepoState{UID: 1, Rev: "b"}}}, 2)
		close(applied)
	}()
	select {
	case <-applied:
		t.Fatal("apply did not wait while the overlay was full")
	case <-time.After(50 * time.Millisecond):
	}
	g, seq := d.swap()
	if g.size() != maxDerivedPending || seq != 1 {
		t.Fatalf("swap: %d effects at seq %d", g.size(), seq)
	}
	if rs, ok := d.repo(5); !ok || rs.Rev != "a" {
		t.Fatal("flushing generation not readable")
	}
	d.flushed(false) // the write failed: everything stays
	select {
	case <-applied:
		t.Fatal("a failed checkpoint freed room")
	case <-time.After(50 * time.Millisecond):
	}
	g, _ = d.swap()
	d.flushed(true)
	<-applied
	if rs, ok := d.repo(1); !ok || rs.Rev != "b" {
		t.Fatalf("newest effect lost: %+v %v", rs, ok)
	}
	if _, ok := d.repo(5); ok {
		t.Fatal("checkpointed effect still in the overlay")
	}
	_ = g
}

// unencodable is a body the sequencer cannot sequence.
type unencodable struct{}

func (unencodable) MarshalCBOR(io.Writer) error { return errors.New("no") }

var _ cbg.CBORMarshaler = unencodable{}

func testSequencer(t *testing.T) (*Sequencer, *eventlog.Log) {
	t.Helper()
	log, err := eventlog.Open(eventlog.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s := NewSequencer(log, NewRing(16, 1<<20), newDerivedState(0), NewMetrics(), 0, func() {}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return s, log
}

// An event that cannot be encoded is reported as such (its host releases
// it), and the events around it are sequenced.
func TestSequencerUnencodableEventIsReleased(t *testing.T) {
	s, log := testSequencer(t)
	defer log.Close()
	defer s.Close()
	errs := make(chan error, 3)
	seqs := make(chan int64, 3)
	done := func(seq int64, err error) { seqs <- seq; errs <- err }
	for _, body := range []cbg.CBORMarshaler{
		&comatproto.SyncSubscribeRepos_Identity{Did: "did:plc:a", Time: "2024-01-01T00:00:00Z"},
		unencodable{},
		&comatproto.SyncSubscribeRepos_Identity{Did: "did:plc:b", Time: "2024-01-01T00:00:00Z"},
	} {
		if err := s.Submit(context.Background(), Outgoing{Kind: KindIdentity, UID: 1, Body: body, Done: done}); err != nil {
			t.Fatal(err)
		}
	}
	var got []int64
	var failed int
	for range 3 {
		seq, err := <-seqs, <-errs
		if errors.Is(err, ErrUnencodable) && seq == 0 {
			failed++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, seq)
	}
	if failed != 1 || !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("failed %d, seqs %v; want 1 failure and seqs 1, 2", failed, got)
	}
}

// After a storage failure the sequencer refuses new events, tells every
// queued one it will never be durable, and reports the failure; its error
// is read without a race (run with -race).
func TestSequencerFailureRefusesAndReleases(t *testing.T) {
	s, log := testSequencer(t)
	log.Close() // every append now fails
	var failed atomic.Int32
	done := func(seq int64, err error) {
		if seq == 0 && errors.Is(err, ErrSequencerFailed) {
			failed.Add(1)
		}
	}
	body := func() cbg.CBORMarshaler {
		return &comatproto.SyncSubscribeRepos_Identity{Did: "did:plc:a", Time: "2024-01-01T00:00:00Z"}
	}
	go func() {
		for s.Err() == nil { // concurrent reads of the error
			time.Sleep(time.Millisecond)
		}
	}()
	submitted := 0
	for i := 0; i < 50; i++ {
		err := s.Submit(context.Background(), Outgoing{Kind: KindIdentity, UID: 1, Body: body(), Done: done})
		if errors.Is(err, ErrSequencerFailed) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		submitted++
	}
	waitUntil(t, 5*time.Second, "sequencer failed", func() bool { return s.Err() != nil })
	if err := s.Submit(context.Background(), Outgoing{Kind: KindIdentity, UID: 1, Body: body(), Done: done}); !errors.Is(err, ErrSequencerFailed) {
		t.Fatalf("Submit after failure: %v", err)
	}
	if err := s.Close(); err == nil {
		t.Fatal("Close hid the failure")
	}
	if int(failed.Load()) != submitted {
		t.Fatalf("%d of %d accepted events told they failed", failed.Load(), submitted)
	}
}

// failingCheckpoints fails WriteCheckpoint while down is set.
type failingCheckpoints struct {
	meta.Store
	down atomic.Bool
}

func (f *failingCheckpoints) WriteCheckpoint(ctx context.Context, cp *meta.Checkpoint) error {
	if f.down.Load() {
		return errStoreDown
	}
	return f.Store.WriteCheckpoint(ctx, cp)
}

type noHosts struct{}

func (noHosts) resumePoints() map[uint64]hostResume { return nil }

// While the store refuses checkpoints, durable effects stay readable in
// the overlay (counted failures); once it is back they reach the store.
func TestCheckpointerRetriesUntilStored(t *testing.T) {
	base := openTestStore(t)
	store := &failingCheckpoints{Store: base}
	store.down.Store(true)
	d := newDerivedState(0)
	m := NewMetrics()
	c := newCheckpointer(store, d, noHosts{}, 0, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	d.apply([]effect{{repo: &meta.RepoState{UID: 3, Rev: "r1", CommitCID: "c", DataCID: "d"}}}, 1)
	waitUntil(t, 5*time.Second, "a failed checkpoint", func() bool { return m.checkpointFailures.Get() >= 2 })
	if rs, ok := d.repo(3); !ok || rs.Rev != "r1" {
		t.Fatal("effect lost from the overlay after failed checkpoints")
	}
	store.down.Store(false)
	waitUntil(t, 5*time.Second, "checkpoint stored", func() bool {
		seq, _, err := base.ReadCheckpoint(context.Background())
		return err == nil && seq == 1
	})
	c.close()
	if rs, err := base.GetRepoState(context.Background(), 3); err != nil || rs.Rev != "r1" {
		t.Fatalf("stored head %+v, %v", rs, err)
	}
	if d.pending() != 0 {
		t.Fatalf("%d effects still pending after the checkpoint", d.pending())
	}
}

func openTestStore(t *testing.T) meta.Store {
	t.Helper()
	s, err := pebblestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
