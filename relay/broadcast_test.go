package relay

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"
)

func submitN(t testing.TB, r *Relay, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if err := r.Submit(context.Background(), identityEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
}

func waitHead(t testing.TB, r *Relay, head int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.Head() < head {
		if time.Now().After(deadline) {
			t.Fatalf("head %d, want %d", r.Head(), head)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestLiveConsumerGetsEveryEventOnce(t *testing.T) {
	r := startRelay(t, testConfig(t))
	c := dialConsumer(t, r.Addr(), "")
	time.Sleep(50 * time.Millisecond) // let the consumer register before the first event
	submitN(t, r, 0, 500)
	c.readSeqs(t, 1, 500, 10*time.Second)
}

// Replay from a cursor crosses into live while events keep arriving: no
// gap, no duplicate, whatever the timing.
func TestCursorReplayCrossesIntoLive(t *testing.T) {
	cfg := testConfig(t)
	cfg.RingSize = 64 // most of the replay comes from disk
	r := startRelay(t, cfg)
	submitN(t, r, 0, 3000)
	waitHead(t, r, 3000)

	const extra = 3000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 3000; i < 3000+extra; i++ {
			_ = r.Submit(context.Background(), identityEvent(i))
			if i%100 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	for _, cursor := range []string{"0", "1", "1500", "2999"} {
		c := dialConsumer(t, r.Addr(), "?cursor="+cursor)
		var from int64
		for _, ch := range cursor {
			from = from*10 + int64(ch-'0')
		}
		c.readSeqs(t, from+1, int(6000-from), 20*time.Second)
	}
	wg.Wait()
}

func TestFutureCursor(t *testing.T) {
	r := startRelay(t, testConfig(t))
	submitN(t, r, 0, 10)
	waitHead(t, r, 10)
	c := dialConsumer(t, r.Addr(), "?cursor=11")
	f, err := c.next(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if f.op != -1 || f.errNm != "FutureCursor" {
		t.Fatalf("got %+v, want FutureCursor error frame", f)
	}
	if _, err := c.next(5 * time.Second); err == nil {
		t.Fatal("connection still open after FutureCursor")
	}
	// The head itself is a valid cursor.
	c2 := dialConsumer(t, r.Addr(), "?cursor=10")
	submitN(t, r, 10, 1)
	c2.readSeqs(t, 11, 1, 5*time.Second)
}

func TestOutdatedCursor(t *testing.T) {
	cfg := testConfig(t)
	cfg.RingSize = 16
	cfg.SegmentEvents = 100
	cfg.MaxEventsBytes = 1 // retention by size keeps only the active segment
	r := startRelay(t, cfg)
	submitN(t, r, 0, 1000)
	waitHead(t, r, 1000)
	if _, err := r.log.Trim(time.Now()); err != nil {
		t.Fatal(err)
	}
	oldest := r.log.OldestSeq()
	if oldest <= 1 {
		t.Fatalf("retention removed nothing (oldest %d)", oldest)
	}
	c := dialConsumer(t, r.Addr(), "?cursor=5")
	f, err := c.next(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if f.t != "#info" || f.errNm != "OutdatedCursor" {
		t.Fatalf("got %+v, want #info OutdatedCursor", f)
	}
	c.readSeqs(t, oldest, int(1000-oldest+1), 10*time.Second)
}

func TestBadCursorIs400(t *testing.T) {
	r := startRelay(t, testConfig(t))
	for _, q := range []string{"abc", "-1", "1.5", "99999999999999999999"} {
		resp, err := http.Get("http://" + r.Addr() + "/xrpc/com.atproto.sync.subscribeRepos?cursor=" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("cursor %q: status %d, want 400", q, resp.StatusCode)
		}
	}
}
