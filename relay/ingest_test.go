package relay

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/gobwas/ws"

	"github.com/relay/relay/perf"
)

// testNet is a fake PLC plus fake PDS hosts, with a relay pointed at them.
type testNet struct {
	plc   *perf.PLC
	hosts []*perf.PDS
	r     *Relay
}

func startTestNet(t *testing.T, hosts int, mutate func(*Config)) *testNet {
	t.Helper()
	return startTestNetHooked(t, hosts, mutate, nil)
}

// dump logs the relay's ingest state, to explain a failure.
func (n *testNet) dump(t *testing.T) {
	for _, h := range n.r.hosts.Hosts() {
		t.Logf("host %s: status %s connected %v cursor %d inflight %d received %d drops %v",
			h.Hostname, h.Status, h.Connected, h.Cursor, h.Inflight, h.Received, h.Drops)
	}
	for i, p := range n.r.ing.partitions {
		t.Logf("partition %d: queue %d pending DIDs %d unsent %d", i, len(p.in), len(p.pending), len(p.unsent))
	}
	st := n.r.Stats()
	t.Logf("head %d, consumers %d, sequencer queue %d", st.HeadSeq, st.Consumers, st.SequencerQueue)
	var b strings.Builder
	n.r.metrics.WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, "relay_events_dropped_total") && !strings.HasSuffix(line, " 0") {
			t.Log(line)
		}
	}
}

// crawl asks the relay to crawl a host and waits until it is subscribed.
func (n *testNet) crawl(t *testing.T, p *perf.PDS) {
	t.Helper()
	requestCrawl(t, n.r, p.Host(), http.StatusOK)
	deadline := time.Now().Add(10 * time.Second)
	for p.Subscribers() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("relay did not subscribe to %s", p.Host())
		}
		time.Sleep(5 * time.Millisecond)
	}
	h := n.r.hosts.byHostname(p.Host())
	for h == nil || !h.ready.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("host %s not ready", p.Host())
		}
		time.Sleep(5 * time.Millisecond)
		h = n.r.hosts.byHostname(p.Host())
	}
}

func requestCrawl(t testing.TB, r *Relay, hostname string, want int) {
	t.Helper()
	body := fmt.Sprintf(`{"hostname":%q}`, hostname)
	resp, err := http.Post("http://"+r.Addr()+"/xrpc/com.atproto.sync.requestCrawl", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		t.Fatalf("requestCrawl %s: status %d (%s), want %d", hostname, resp.StatusCode, b.String(), want)
	}
}

func mustCommit(t testing.TB, a *perf.Account, ops int) perf.Event {
	t.Helper()
	c, err := a.Commit(ops)
	if err != nil {
		t.Fatal(err)
	}
	return perf.Event{Commit: c}
}

// collect reads frames until n message frames arrived.
func collect(t *testing.T, c *testConsumer, n int, timeout time.Duration) []frame {
	t.Helper()
	var out []frame
	deadline := time.Now().Add(timeout)
	for len(out) < n {
		f, err := c.next(time.Until(deadline))
		if err != nil {
			t.Fatalf("after %d of %d frames: %v", len(out), n, err)
		}
		out = append(out, f)
	}
	return out
}

// expectQuiet checks that nothing more arrives for a while.
func expectQuiet(t *testing.T, c *testConsumer, d time.Duration) {
	t.Helper()
	if f, err := c.next(d); err == nil {
		t.Fatalf("unexpected extra frame %+v", f)
	}
}

func TestIngestValidFlowAcrossHosts(t *testing.T) {
	n := startTestNet(t, 3, nil)
	var accounts []*perf.Account
	for i := 0; i < 10; i++ {
		kt := perf.K256
		if i%2 == 1 {
			kt = perf.P256
		}
		a, err := perf.NewAccount(kt, fmt.Sprintf("user%d.test", i), n.plc, n.hosts[i%3])
		if err != nil {
			t.Fatal(err)
		}
		accounts = append(accounts, a)
	}
	for _, p := range n.hosts {
		n.crawl(t, p)
	}
	c := dialConsumer(t, n.r.Addr(), "")
	const perAccount = 5
	for round := 0; round < perAccount; round++ {
		for _, a := range accounts {
			a.PDS().Emit(mustCommit(t, a, 1+round%3))
		}
	}
	frames := collect(t, c, len(accounts)*perAccount, 30*time.Second)
	perDID := map[string]int{}
	var last int64
	for _, f := range frames {
		if f.t != "#commit" {
			t.Fatalf("unexpected frame %+v", f)
		}
		if f.seq != last+1 {
			t.Fatalf("seq %d after %d", f.seq, last)
		}
		last = f.seq
		perDID[f.did]++
	}
	for _, a := range accounts {
		if perDID[a.DID] != perAccount {
			t.Errorf("%s: %d commits delivered, want %d", a.DID, perDID[a.DID], perAccount)
		}
	}
	expectQuiet(t, c, 300*time.Millisecond)
}

func TestIngestDropsEachInvalidClass(t *testing.T) {
	n := startTestNet(t, 2, nil)
	p, other := n.hosts[0], n.hosts[1]
	a, err := perf.NewAccount(perf.K256, "alice.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	elsewhere, err := perf.NewAccount(perf.P256, "bob.test", n.plc, other)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")

	p.Emit(mustCommit(t, a, 1)) // valid: first commit
	build := func(f func() (*comatproto.SyncSubscribeRepos_Commit, error)) perf.Event {
		cm, err := f()
		if err != nil {
			t.Fatal(err)
		}
		return perf.Event{Commit: cm}
	}
	p.Emit(build(a.BadSignatureCommit))
	p.Emit(build(a.StaleRevCommit))
	p.Emit(build(a.FutureRevCommit))
	p.Emit(build(a.TooManyOpsCommit))
	p.Emit(build(a.OversizedCommit))
	p.Emit(build(a.BrokenPrevDataCommit))
	p.Emit(mustCommit(t, elsewhere, 1)) // wrong host: bob lives on the other PDS
	good, err := perf.EncodeEvent(mustCommit(t, a, 1), 0)
	if err != nil {
		t.Fatal(err)
	}
	p.EmitRaw(perf.TruncatedFrame(good), ws.OpBinary)
	p.EmitRaw(perf.GarbageFrame(), ws.OpBinary)
	p.EmitRaw([]byte("hello"), ws.OpText)
	p.Emit(mustCommit(t, a, 2)) // valid again: the host keeps flowing

	frames := collect(t, c, 2, 30*time.Second)
	for i, f := range frames {
		if f.t != "#commit" || f.did != a.DID || f.seq != int64(i+1) {
			t.Fatalf("frame %d: %+v", i, f)
		}
	}
	expectQuiet(t, c, 300*time.Millisecond)
	m := n.r.metrics
	for _, reason := range []string{"bad_signature", "stale_rev", "future_rev", "too_many_ops", "blocks_too_big", "inversion_failed", "wrong_host", "bad_frame", "text_frame"} {
		if got := m.Dropped(reason).Get(); got < 1 {
			t.Errorf("drop reason %s: counted %d, want >= 1", reason, got)
		}
	}
	if got := m.Dropped("bad_cbor").Get() + m.Dropped("bad_frame").Get(); got < 2 {
		t.Errorf("truncated + garbage frames: %d drops counted, want 2", got)
	}
}

// A DID that does not parse is dropped where it enters the relay, counted
// as bad_did, before any lookup.
func TestIngestDropsBadDIDs(t *testing.T) {
	n := startTestNet(t, 1, nil)
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "baddid.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	ev := mustCommit(t, a, 1)
	ev.Commit.Repo = "did:not a did"
	before := n.plc.Requests()
	p.Emit(ev)
	waitUntil(t, 10*time.Second, "bad DID dropped", func() bool {
		return hostRecord(t, n.r, p.Host()).Drops["bad_did"] == 1
	})
	if n.plc.Requests() != before {
		t.Fatal("a bad DID was looked up")
	}
}
