package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/gobwas/ws"

	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/relay/lexicon"
	"github.com/relay/relay/wsframe"
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

// TestFanoutPacedWithManyConsumers: a loop serving pacedConsumers or more
// pumps at most once per pumpGap however often batches arrive, and every
// consumer still gets every event once.
func TestFanoutPacedWithManyConsumers(t *testing.T) {
	cfg := testConfig(t)
	cfg.EventLoops = 1
	r := startRelay(t, cfg)
	const n = pacedConsumers + 8
	cs := make([]*testConsumer, n)
	for i := range cs {
		cs[i] = dialConsumer(t, r.Addr(), "")
	}
	waitConsumers(t, r, n)
	g := r.bc.loopGroups()[0]
	before := g.pumps.Load()
	start := time.Now()
	const events = 400
	for i := range events {
		if err := r.Submit(context.Background(), identityEvent(i)); err != nil {
			t.Fatal(err)
		}
		waitHead(t, r, int64(i+1)) // one batch each: unpaced, one pump each
	}
	for _, c := range cs {
		c.readSeqs(t, 1, events, 10*time.Second)
	}
	pumps, limit := g.pumps.Load()-before, int64(time.Since(start)/pumpGap)+2
	if pumps > limit {
		t.Fatalf("%d pumps in %v, want at most %d (one per %v)", pumps, time.Since(start), limit, pumpGap)
	}
	t.Logf("%d events, %d pumps", events, pumps)
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

// bigIdentityEvent is an event of about size bytes.
func bigIdentityEvent(n, size int) Outgoing {
	ev := identityEvent(n)
	h := strings.Repeat("h", size)
	ev.Body.(*comatproto.SyncSubscribeRepos_Identity).Handle = &h
	return ev
}

// A consumer that stops reading stays bounded (its socket cap) and is
// kicked with ConsumerTooSlow only once it lags past the maximum, while 100
// others receive everything.
func TestSlowConsumerKickedOnlyPastMaxLag(t *testing.T) {
	cfg := testConfig(t)
	cfg.ConsumerMaxLag = 5000
	cfg.ConsumerOutboundCap = 64 << 10
	r := startRelay(t, cfg)

	// The slow consumer: a tiny receive buffer, and it never reads.
	d := ws.Dialer{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
		}}
		return nd.DialContext(ctx, network, addr)
	}}
	slow, slowBR, _, err := d.Dial(context.Background(), "ws://"+r.Addr()+"/xrpc/com.atproto.sync.subscribeRepos")
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()

	const fast = 100
	const phase1, phase2 = 3000, 15000
	var wg sync.WaitGroup
	errs := make(chan error, fast)
	progress := make([]atomic.Int64, fast)
	for i := 0; i < fast; i++ {
		c := dialConsumer(t, r.Addr(), "")
		wg.Add(1)
		go func(i int, c *testConsumer) {
			defer wg.Done()
			want := int64(1)
			for want <= phase1+phase2 {
				f, err := c.next(60 * time.Second)
				if err != nil {
					errs <- fmt.Errorf("fast consumer %d at seq %d: %w", i, want, err)
					return
				}
				if f.seq != want {
					errs <- fmt.Errorf("fast consumer %d: seq %d, want %d", i, f.seq, want)
					return
				}
				progress[i].Store(want)
				want++
			}
		}(i, c)
	}
	waitConsumers(t, r, fast+1)

	for i := 0; i < phase1; i++ {
		if err := r.Submit(context.Background(), bigIdentityEvent(i, 400)); err != nil {
			t.Fatal(err)
		}
	}
	waitProgress(t, progress, phase1)
	if got := r.bc.Count(); got != fast+1 {
		t.Fatalf("%d consumers connected after %d events, want %d (slow one kicked below max lag)", got, phase1, fast+1)
	}
	if k := r.metrics.ConsumerClosed("too_slow").Get(); k != 0 {
		t.Fatalf("kicked %d consumers below the max lag", k)
	}

	// Paced so the fast consumers never lag past the maximum themselves.
	for i := phase1; i < phase1+phase2; i++ {
		if err := r.Submit(context.Background(), bigIdentityEvent(i, 400)); err != nil {
			t.Fatal(err)
		}
		if (i+1)%1000 == 0 {
			waitProgress(t, progress, int64(i+1)-1000)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.metrics.ConsumerClosed("too_slow").Get() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("slow consumer was never kicked")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// What the slow consumer finally reads ends with ConsumerTooSlow.
	var last frame
	sc := newTestConsumer(slow, slowBR)
	for {
		f, err := sc.next(10 * time.Second)
		if err != nil {
			break
		}
		last = f
	}
	if last.op != -1 || last.errNm != "ConsumerTooSlow" {
		t.Fatalf("slow consumer's last frame %+v, want ConsumerTooSlow", last)
	}
}

func waitConsumers(t *testing.T, r *Relay, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.bc.Count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d consumers registered, want %d", r.bc.Count(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitProgress(t *testing.T, progress []atomic.Int64, n int64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for i := range progress {
		for progress[i].Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("consumer %d at %d, want %d", i, progress[i].Load(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// Graceful shutdown: every accepted event reaches the live consumer and
// the log; a restart on the same data dir replays them all and continues.
func TestGracefulShutdownLosesNothing(t *testing.T) {
	cfg := testConfig(t)
	r, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(testHandlers(r)); err != nil {
		t.Fatal(err)
	}
	c := dialConsumer(t, r.Addr(), "")
	waitConsumers(t, r, 1)
	submitN(t, r, 0, 1000)
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.readSeqs(t, 1, 1000, 10*time.Second)

	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", "127.0.0.1:0"
	r2 := startRelay(t, cfg)
	if r2.Head() != 1000 {
		t.Fatalf("head after restart %d, want 1000", r2.Head())
	}
	c2 := dialConsumer(t, r2.Addr(), "?cursor=0")
	submitN(t, r2, 1000, 10)
	c2.readSeqs(t, 1, 1010, 10*time.Second)
}

func TestCheckLoggedFrame(t *testing.T) {
	r := startRelay(t, testConfig(t))
	c := dialConsumer(t, r.Addr(), "")
	waitConsumers(t, r, 1)
	submitN(t, r, 0, 1)
	c.readSeqs(t, 1, 1, 5*time.Second)
	var logged []byte
	if _, err := r.log.ReadAfter(0, 1<<20, func(rec eventlog.Record) error {
		logged = append([]byte(nil), rec.Payload...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := checkLoggedFrame(logged); err != nil {
		t.Fatalf("a sequenced frame fails the check: %v", err)
	}
	for name, p := range map[string][]byte{
		"zeros":       make([]byte, len(logged)),
		"empty":       nil,
		"error frame": wsframe.AppendErrorPayload(nil, "FutureCursor", ""),
		"header only": wsframe.AppendEventHeader(nil, "#commit"),
	} {
		if err := checkLoggedFrame(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestMaxConsumersRefusedBeforeUpgrade(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxConsumers = 2
	r := startRelay(t, cfg)
	dialConsumer(t, r.Addr(), "")
	dialConsumer(t, r.Addr(), "")
	waitConsumers(t, r, 2)
	resp, err := http.Get("http://" + r.Addr() + "/xrpc/com.atproto.sync.subscribeRepos")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusServiceUnavailable || body.Error != lexicon.TooManyConsumers {
		t.Fatalf("third consumer: %d %q, want 503 %s", resp.StatusCode, body.Error, lexicon.TooManyConsumers)
	}
}

// Concurrent upgrades cannot exceed the consumer cap: the slot is taken
// under the same lock as the check; a consumer that leaves frees its slot.
func TestMaxConsumersExactUnderConcurrentUpgrades(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxConsumers = 5
	r := startRelay(t, cfg)
	const tries = 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	refused := 0
	for i := 0; i < tries; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, _, _, err := ws.Dial(ctx, "ws://"+r.Addr()+"/xrpc/com.atproto.sync.subscribeRepos")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				var se ws.StatusError
				if errors.As(err, &se) && int(se) == http.StatusServiceUnavailable {
					refused++
					return
				}
				t.Errorf("dial: %v", err)
				return
			}
			conns = append(conns, conn)
		}()
	}
	wg.Wait()
	if len(conns) != cfg.MaxConsumers || refused != tries-cfg.MaxConsumers {
		t.Fatalf("%d consumers connected and %d refused, want exactly %d connected", len(conns), refused, cfg.MaxConsumers)
	}
	conns[0].Close()
	waitUntil(t, 5*time.Second, "slot freed", func() bool { return r.bc.Count() == cfg.MaxConsumers-1 })
	c := dialConsumer(t, r.Addr(), "")
	_ = c
	for _, c := range conns[1:] {
		c.Close()
	}
}

// failingReplay makes one ReadAfter call fail after it visited records.
type failingReplay struct {
	replaySource
	calls  atomic.Int32
	failAt int32
}

var errReplayRead = errors.New("test: injected replay read error")

func (f *failingReplay) ReadAfter(cursor int64, maxBytes int, fn func(eventlog.Record) error) (int64, error) {
	last, err := f.replaySource.ReadAfter(cursor, maxBytes, fn)
	if f.calls.Add(1) == f.failAt && err == nil {
		return last, errReplayRead
	}
	return last, err
}

// A replay read error closes the consumer where it stands: it never skips
// what the failed step had read, and resuming by cursor misses nothing.
func TestReplayReadErrorClosesNotSkips(t *testing.T) {
	cfg := testConfig(t)
	cfg.RingSize = 16
	r := startRelay(t, cfg)
	submitN(t, r, 0, 3000)
	waitHead(t, r, 3000)
	r.bc.log = &failingReplay{replaySource: r.log, failAt: 1}
	c := dialConsumer(t, r.Addr(), "?cursor=0")
	var last int64
	for {
		f, err := c.next(10 * time.Second)
		if err != nil {
			break // closed after the failed step
		}
		if f.seq != last+1 {
			t.Fatalf("seq %d after %d: skipped", f.seq, last)
		}
		last = f.seq
	}
	if last >= 3000 {
		t.Fatalf("the injected error did not interrupt the replay (last %d)", last)
	}
	if got := r.metrics.replayReadErrors.Get(); got != 1 {
		t.Fatalf("relay_consumer_replay_read_errors_total = %d, want 1", got)
	}
	c2 := dialConsumer(t, r.Addr(), fmt.Sprintf("?cursor=%d", last))
	c2.readSeqs(t, last+1, int(3000-last), 20*time.Second)
}
