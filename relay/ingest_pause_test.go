package relay

import (
	"context"
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

// A host whose worker is full is paused, not dropped and not re-decoded:
// once the worker drains, every event arrives once, in order, counted once.
func TestIngestPausedHostLosesNothing(t *testing.T) {
	n := startTestNet(t, 1, func(c *Config) { c.FrameWorkers = 1 })
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "pause.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")

	// Stall the only worker.
	release := make(chan struct{})
	if err := n.r.ing.Exec(context.Background(), a.DID, func(*partition) { <-release }); err != nil {
		t.Fatal(err)
	}
	const total = partitionQueue + 500
	for i := 0; i < total; i++ {
		p.Emit(mustCommit(t, a, 1))
	}
	h := n.r.hosts.byHostname(p.Host())
	eventually(t, 20*time.Second, "the host to pause", func() bool { return h.paused.Load() })
	time.Sleep(100 * time.Millisecond) // several resume sweeps while still full
	if !h.paused.Load() {
		t.Fatal("host resumed while its worker was still full")
	}
	close(release)
	frames := collect(t, c, total, 60*time.Second)
	for i, f := range frames {
		if f.t != "#commit" || f.seq != int64(i+1) {
			t.Fatalf("frame %d: %+v", i, f)
		}
	}
	expectQuiet(t, c, 300*time.Millisecond)
	if got := n.r.metrics.EventsIn("#commit").Get(); got != total {
		t.Fatalf("relay_events_in_total{#commit} = %d, want %d (a paused event counted twice)", got, total)
	}
}

func TestMarkPausedIsBounded(t *testing.T) {
	m := &HostManager{paused: map[*hostConn]pauseCause{}}
	hosts := make([]*hostConn, maxPausedHosts+1)
	for i := range hosts {
		hosts[i] = &hostConn{}
	}
	for _, h := range hosts[:maxPausedHosts] {
		if !m.markPaused(h, nil) {
			t.Fatal("refused below the bound")
		}
	}
	if !m.markPaused(hosts[0], nil) {
		t.Fatal("refused a host that is already paused")
	}
	if m.markPaused(hosts[maxPausedHosts], nil) {
		t.Fatal("accepted a host past the bound")
	}
	m.unmarkPaused(hosts[0])
	if !m.markPaused(hosts[maxPausedHosts], nil) || hosts[0].paused.Load() {
		t.Fatal("a slot freed by unmarkPaused was not reusable")
	}
}
