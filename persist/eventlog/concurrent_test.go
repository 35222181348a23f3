package eventlog

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Readers racing the writer never see a record that is not durable, a
// partial record, or a gap; run under -race.
func TestConcurrentReadWhileAppending(t *testing.T) {
	l := openLog(t, Options{Dir: t.TempDir(), SegmentMaxEvents: 100})
	defer l.Close()
	const total = 1500
	errc := make(chan error, 8)

	var wg sync.WaitGroup
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cursor := int64(0)
			budget := 200 + r*3000
			for cursor < total {
				expect := cursor + 1
				last, err := l.ReadAfter(cursor, budget, func(rec Record) error {
					if rec.Seq != expect {
						return fmt.Errorf("reader %d: got seq %d, want %d", r, rec.Seq, expect)
					}
					if !bytes.Equal(rec.Payload, payloadFor(rec.Seq)) {
						return fmt.Errorf("reader %d: seq %d payload differs", r, rec.Seq)
					}
					expect++
					return nil
				})
				if err != nil {
					errc <- err
					return
				}
				// Everything visited was durable when the call returned.
				if d := l.DurableSeq(); last > d {
					errc <- fmt.Errorf("reader %d: visited %d beyond DurableSeq %d", r, last, d)
					return
				}
				if last != expect-1 {
					errc <- fmt.Errorf("reader %d: last %d but fn saw up to %d", r, last, expect-1)
					return
				}
				if last == cursor {
					runtime.Gosched() // nothing new yet
				}
				cursor = last
			}
		}()
	}

	// Writer: groups of varying size, a Sync after most groups.
	seq := int64(0)
	for seq < total {
		n := int(seq%13) + 1
		var recs []Record
		for range n {
			if seq == total {
				break
			}
			seq++
			recs = append(recs, recFor(seq, uint64(seq%3+1)))
		}
		if err := l.Append(recs); err != nil {
			t.Fatal(err)
		}
		if seq%3 == 0 {
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

// Takedown and Trim racing readers and the writer: every record a reader
// gets is whole and original (never half-zeroed), and uid 2 records are
// only ever seen before their takedown began.
func TestConcurrentTakedownAndTrim(t *testing.T) {
	l := openLog(t, Options{Dir: t.TempDir(), SegmentMaxEvents: 40, MaxBytes: 40 << 10})
	defer l.Close()
	const total = 3000
	var (
		takedownStarted atomic.Bool
		stop            atomic.Bool
		wg              sync.WaitGroup
	)
	errc := make(chan error, 16)
	for r := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cursor := int64(0)
			for !stop.Load() {
				began := takedownStarted.Load()
				last, err := l.ReadAfter(cursor, 4000+r*1000, func(rec Record) error {
					if rec.Flags != 0 || !bytes.Equal(rec.Payload, payloadFor(rec.Seq)) {
						return fmt.Errorf("seq %d: flags %d, payload not original", rec.Seq, rec.Flags)
					}
					if rec.UID == 2 && began {
						return fmt.Errorf("seq %d of uid 2 read after its takedown finished", rec.Seq)
					}
					return nil
				})
				if err != nil {
					errc <- err
					return
				}
				if last < cursor {
					errc <- fmt.Errorf("ReadAfter went back from %d to %d", cursor, last)
					return
				}
				cursor = last
				if cursor >= total {
					cursor = 0
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if _, err := l.Trim(time.Now()); err != nil {
				errc <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()

	tookDown := false
	for seq := int64(1); seq <= total; seq++ {
		uid := uint64(seq%3 + 1)
		if tookDown && uid == 2 {
			uid = 4 // the relay stops taking an account's events once it is taken down
		}
		rec := recFor(seq, uid)
		if err := l.Append([]Record{rec}); err != nil {
			t.Fatal(err)
		}
		if seq%8 == 0 || seq == total/2 {
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		if seq == total/2 {
			if _, err := l.Takedown(2); err != nil {
				t.Fatal(err)
			}
			// Reads that start after Takedown returned must not see uid 2.
			takedownStarted.Store(true)
			tookDown = true
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if _, err := l.Trim(time.Now()); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Bytes > 40<<10 && st.Segments > 1 {
		t.Errorf("after Trim: %+v, over MaxBytes with sealed segments left", st)
	}
	// Whatever was retained reads back whole, without uid 2.
	for _, r := range readAll(t, l, 0, 1<<30) {
		if r.UID == 2 || !bytes.Equal(r.Payload, payloadFor(r.Seq)) {
			t.Fatalf("seq %d: uid %d, payload original %v", r.Seq, r.UID, bytes.Equal(r.Payload, payloadFor(r.Seq)))
		}
	}
}
