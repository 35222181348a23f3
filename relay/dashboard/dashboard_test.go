package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSource is a relay of given size whose counters the test moves.
type fakeSource struct {
	mu        sync.Mutex
	stats     Stats
	hosts     []Host
	consumers []Consumer
	ready     string
}

func (f *fakeSource) source() Source {
	return Source{
		Stats: func() Stats {
			f.mu.Lock()
			defer f.mu.Unlock()
			s := f.stats
			s.Drops = map[string]uint64{}
			for k, v := range f.stats.Drops {
				s.Drops[k] = v
			}
			return s
		},
		Hosts: func() []Host {
			f.mu.Lock()
			defer f.mu.Unlock()
			return append([]Host(nil), f.hosts...)
		},
		Consumers: func() []Consumer {
			f.mu.Lock()
			defer f.mu.Unlock()
			return append([]Consumer(nil), f.consumers...)
		},
		Ready: func(context.Context) string { return f.ready },
	}
}

func bigSource(hosts, consumers int) *fakeSource {
	f := &fakeSource{stats: Stats{Drops: map[string]uint64{"bad_signature": 0, "stale_rev": 0}}}
	for i := range hosts {
		h := Host{Hostname: fmt.Sprintf("pds%04d.example.com", i), Status: "active", Connected: true, Received: int64(i)}
		if i%100 == 7 {
			h.Connected, h.Failures, h.LastError, h.LastErrorAt = false, i/100, "dial tcp: connection refused", time.Now()
		}
		f.hosts = append(f.hosts, h)
	}
	for i := range consumers {
		f.consumers = append(f.consumers, Consumer{ID: uint64(i + 1), RemoteAddr: "10.0.0.1:1", Lag: int64(i % 977), QueuedBytes: int64(i)})
	}
	return f
}

func getState(t *testing.T, d *Dashboard, query string) (State, int, int) {
	t.Helper()
	rec := httptest.NewRecorder()
	d.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/dash/api/state"+query, nil))
	body := rec.Body.Bytes()
	var st State
	if rec.Code == http.StatusOK {
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("state is not JSON: %v", err)
		}
	}
	return st, rec.Code, len(body)
}

func TestStateRatesAndLists(t *testing.T) {
	f := bigSource(3000, 5000)
	d := New(f.source(), Options{History: 30})
	d.Sample()
	time.Sleep(50 * time.Millisecond)
	f.mu.Lock()
	f.stats.EventsIn, f.stats.EventsOut, f.stats.FramesSent = 500, 400, 4000
	f.stats.Drops["bad_signature"] = 5
	f.stats.HeadSeq = 400
	f.mu.Unlock()
	d.Sample()

	st, code, size := getState(t, d, "")
	if code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	if st.Rates.In <= 0 || st.Rates.Out <= 0 || st.Rates.In <= st.Rates.Out || st.Rates.Sent <= st.Rates.Out {
		t.Fatalf("rates %+v", st.Rates)
	}
	if len(st.Series) != 1 || st.HeadSeq != 400 || !st.Ready {
		t.Fatalf("series %v head %d ready %v", st.Series, st.HeadSeq, st.Ready)
	}
	if st.Drops[0].Reason != "bad_signature" || st.Drops[0].Total != 5 || st.Drops[0].Rate <= 0 {
		t.Fatalf("drops %+v", st.Drops)
	}
	// 3,000 hosts and 5,000 consumers: totals are complete, lists are a page.
	if st.Hosts.Total != 3000 || st.Hosts.Failing != 30 || st.Hosts.ByStatus["active"] != 3000 || len(st.Hosts.List) != defaultLimit {
		t.Fatalf("hosts total %d failing %d list %d", st.Hosts.Total, st.Hosts.Failing, len(st.Hosts.List))
	}
	if st.Hosts.List[0].Failures != 29 || st.Hosts.List[0].LastError == "" {
		t.Fatalf("worst failing host first: %+v", st.Hosts.List[0])
	}
	if st.Consumers.Total != 5000 || len(st.Consumers.List) != defaultLimit || st.Consumers.List[0].Lag != 976 || st.Consumers.MaxLag != 976 {
		t.Fatalf("consumers %+v", st.Consumers.List[0])
	}
	if size > 64<<10 {
		t.Fatalf("state document is %d bytes for 3,000 hosts and 5,000 consumers", size)
	}

	// Paging and filtering.
	st, _, _ = getState(t, d, "?hostView=all&hostQ=PDS29&hostLimit=5&hostOffset=5&consumerLimit=500&consumerOffset=4900")
	if st.Hosts.Matched != 100 || len(st.Hosts.List) != 5 || !strings.HasPrefix(st.Hosts.List[0].Hostname, "pds29") {
		t.Fatalf("filtered hosts: matched %d %+v", st.Hosts.Matched, st.Hosts.List)
	}
	if st.Hosts.List[0].Received != 2994 { // busiest first: 2999..2990, offset 5
		t.Fatalf("host order %+v", st.Hosts.List)
	}
	if len(st.Consumers.List) != 100 {
		t.Fatalf("last consumer page has %d", len(st.Consumers.List))
	}
	st, _, _ = getState(t, d, "?consumerOffset=999999")
	if st.Consumers.List == nil || len(st.Consumers.List) != 0 {
		t.Fatalf("past the end: %v", st.Consumers.List)
	}
}

func TestStateBadInputAndNotReady(t *testing.T) {
	f := bigSource(0, 0)
	f.ready = "metadata store unreachable: boom"
	d := New(f.source(), Options{})
	for _, q := range []string{"?hostLimit=-1", "?hostLimit=100000", "?consumerOffset=x", "?hostView=weird", "?hostQ=" + strings.Repeat("a", 300)} {
		rec := httptest.NewRecorder()
		d.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/dash/api/state"+q, nil))
		var e map[string]string
		if rec.Code != http.StatusBadRequest || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e["error"] != "BadRequest" || e["message"] == "" {
			t.Fatalf("%s: %d %s", q, rec.Code, rec.Body.String())
		}
	}
	st, code, _ := getState(t, d, "")
	if code != http.StatusOK || st.Ready || st.ReadyReason != f.ready || st.Hosts.List == nil || st.Consumers.List == nil || st.Series == nil {
		t.Fatalf("empty relay: %d %+v", code, st)
	}
	if st.Fsync.P99ms != -1 {
		t.Fatalf("no fsync yet: %+v", st.Fsync)
	}
	// Read-only: no other method, no other path.
	rec := httptest.NewRecorder()
	d.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/dash/api/state", nil))
	if rec.Code != http.StatusNotFound && rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	d.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/dash/", nil))
	page, _ := io.ReadAll(rec.Body)
	if rec.Code != http.StatusOK || !strings.Contains(string(page), `id="rate-in"`) || strings.Contains(string(page), "<script src") || strings.Contains(string(page), "<link") {
		t.Fatalf("page: %d", rec.Code)
	}
}

func TestSamplerRingIsBounded(t *testing.T) {
	s := newSampler(5)
	base := time.Now()
	for i := range 12 {
		s.add(sample{at: base.Add(time.Duration(i) * time.Second), in: uint64(i * 10)})
	}
	got := s.ordered()
	if len(got) != 5 || got[0].in != 70 || got[4].in != 110 {
		t.Fatalf("ring %v", got)
	}
	pts := series(got)
	if len(pts) != 4 || pts[0].In != 10 {
		t.Fatalf("series %v", pts)
	}
	// A counter that goes backwards is not a negative rate.
	if r := rate(100, 5, 1); r != 0 {
		t.Fatalf("rate %v", r)
	}
}

func TestWindowLatency(t *testing.T) {
	a := Histogram{Buckets: []Bucket{{0.001, 100}}}
	b := Histogram{Buckets: []Bucket{{0.001, 190}, {0.01, 9}, {0.1, 1}}}
	l := windowLatency(a, b, 10)
	if l.Count != 100 || l.P50ms != 1 || l.P99ms != 10 || l.Maxms != 100 {
		t.Fatalf("latency %+v", l)
	}
}
