package relay

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"

	"github.com/relay/relay/perf"
)

// BenchmarkFloodNeighbours: one host floods at 10x its event rate limit
// next to 99 hosts at 5 events/s each. The normal hosts' emit-to-delivery
// latency, without and with the flood, in one run: the limit holds the
// flood at its socket without delaying the others.
//
//	go test ./relay -run '^$' -bench FloodNeighbours -benchtime 1x
func BenchmarkFloodNeighbours(b *testing.B) {
	for _, flood := range []bool{false, true} {
		b.Run(fmt.Sprintf("flood=%v", flood), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				p50, p99, held := runFloodNeighbours(b, flood)
				b.ReportMetric(p50.Seconds()*1000, "normal-p50-ms")
				b.ReportMetric(p99.Seconds()*1000, "normal-p99-ms")
				b.ReportMetric(held, "flood-held-s")
			}
		})
	}
}

func runFloodNeighbours(b *testing.B, flood bool) (p50, p99 time.Duration, held float64) {
	const normal, phase = 99, 10 * time.Second
	n := &testNet{}
	plc, err := perf.StartPLC()
	if err != nil {
		b.Fatal(err)
	}
	defer plc.Close()
	n.plc = plc
	for i := 0; i <= normal; i++ {
		p, err := perf.StartPDS(perf.PDSOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		n.hosts = append(n.hosts, p)
	}
	cfg := testConfig(b)
	cfg.PLCHost = plc.URL()
	cfg.TrustedDomains = ""
	cfg.DefaultAccountLimit = 0 // 50 events/s per host
	cfg.NewHostsPerDay = 0      // no daily cap on requestCrawl
	r := startRelay(b, cfg)
	accts := make([]*perf.Account, len(n.hosts))
	for i, p := range n.hosts {
		a, err := perf.NewAccount(perf.K256, fmt.Sprintf("n%d.test", i), plc, p)
		if err != nil {
			b.Fatal(err)
		}
		accts[i] = a
		requestCrawl(b, r, p.Host(), http.StatusOK)
	}
	for _, p := range n.hosts {
		for p.Subscribers() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	c := dialConsumer(b, r.Addr(), "")
	var mu sync.Mutex
	sent := map[string]time.Time{} // rev of a normal host's commit -> emit time
	var lat []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			e, err := c.nextEvent(3 * time.Second)
			if err != nil {
				return
			}
			mu.Lock()
			if t0, ok := sent[e.rev]; ok {
				lat = append(lat, time.Since(t0))
			}
			mu.Unlock()
		}
	}()
	stop := time.Now().Add(phase)
	var wg sync.WaitGroup
	if flood {
		wg.Add(1)
		go func() { // 500/s: ten times the flood host's limit
			defer wg.Done()
			for t := time.NewTicker(2 * time.Millisecond); time.Now().Before(stop); <-t.C {
				emitCommit(b, accts[0], n.hosts[0], 1)
			}
		}()
	}
	b.ResetTimer()
	for t := time.NewTicker(time.Second / 5); time.Now().Before(stop); <-t.C {
		for i := 1; i <= normal; i++ {
			ev := mustCommit(b, accts[i], 1)
			mu.Lock()
			sent[ev.Commit.Rev] = time.Now()
			mu.Unlock()
			n.hosts[i].Emit(ev)
		}
	}
	wg.Wait()
	time.Sleep(time.Second)
	b.StopTimer()
	c.conn.Close()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(lat) < len(sent)*9/10 {
		b.Fatalf("only %d of %d normal commits delivered", len(lat), len(sent))
	}
	slices.Sort(lat)
	if flood {
		held = r.hosts.byHostname(n.hosts[0].Host()).info().ThrottledSeconds
	}
	return lat[len(lat)/2], lat[len(lat)*99/100], held
}

// BenchmarkDiscovery3000: a fake upstream lists 3,000 PDS hosts (in a
// child process); discovery checks and adds each. Time until all are
// connected, and the relay's goroutines and RSS during it.
//
//	go test ./relay -run '^$' -bench Discovery3000 -benchtime 1x -timeout 20m
func BenchmarkDiscovery3000(b *testing.B) {
	const n = 3000
	hosts := startFleet(b, n)
	seed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		out := comatproto.SyncListHosts_Output{}
		for _, h := range hosts {
			out.Hosts = append(out.Hosts, &comatproto.SyncListHosts_Host{Hostname: h})
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	defer seed.Close()
	runtime.GC()
	g0, rss0 := runtime.NumGoroutine(), rssBytes(b)
	cfg := testConfig(b)
	cfg.Upstream = seed.URL
	cfg.DiscoveryInterval = 0
	b.ResetTimer()
	start := time.Now()
	r := startRelay(b, cfg)
	maxG, maxRSS := 0, int64(0)
	deadline := time.Now().Add(10 * time.Minute)
	for r.hosts.connectedCount() < n {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d hosts connected", r.hosts.connectedCount(), n)
		}
		maxG = max(maxG, runtime.NumGoroutine())
		maxRSS = max(maxRSS, rssBytes(b))
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(start)
	b.StopTimer()
	b.ReportMetric(took.Seconds(), "s-to-all-connected")
	b.ReportMetric(float64(maxG-g0), "max-relay-goroutines")
	b.ReportMetric(float64(maxRSS-rss0)/(1<<20), "max-relay-rss-MiB")
}
