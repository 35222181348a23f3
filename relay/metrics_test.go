package relay

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/relay/relay/perf"
)

// scrape fetches /metrics and parses it as Prometheus text.
func scrape(t *testing.T, r *Relay) map[string]*dto.MetricFamily {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+r.MetricsAddr()+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	return fams
}

// sample is the value of the series of family name whose labels include
// every label in want; ok is false when there is none.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (v float64, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func TestMetricsParseAndMove(t *testing.T) {
	n := startTestNet(t, 1, func(cfg *Config) { cfg.AdminPassword = testAdminPassword })
	p := n.hosts[0]
	a, err := perf.NewAccount(perf.K256, "alice.test", n.plc, p)
	if err != nil {
		t.Fatal(err)
	}
	n.crawl(t, p)
	c := dialConsumer(t, n.r.Addr(), "")
	before := scrape(t, n.r)

	const commits = 3
	for i := 0; i < commits; i++ {
		p.Emit(mustCommit(t, a, 1))
	}
	bad, err := a.BadSignatureCommit()
	if err != nil {
		t.Fatal(err)
	}
	p.Emit(perf.Event{Commit: bad})
	p.Emit(perf.Event{Identity: a.Identity()})
	collect(t, c, commits+1, 10*time.Second)
	eventually(t, 10*time.Second, "the bad signature to be counted", func() bool {
		return n.r.metrics.Dropped("bad_signature").Get() > 0
	})
	adminOK(t, n.r, "POST", "/admin/domainBans/add", `{"domain":"example.com"}`)
	after := scrape(t, n.r)

	// Counters that must have moved by at least the given amount.
	moved := []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"relay_events_in_total", map[string]string{"type": "#commit"}, commits + 1},
		{"relay_events_in_total", map[string]string{"type": "#identity"}, 1},
		{"relay_events_out_total", map[string]string{"type": "#commit"}, commits},
		{"relay_events_out_total", map[string]string{"type": "#identity"}, 1},
		{"relay_events_dropped_total", map[string]string{"reason": "bad_signature"}, 1},
		{"relay_validate_seconds_count", nil, commits + 1},
		{"relay_sequencer_batch_seconds_count", nil, 1},
		{"relay_eventlog_fsync_seconds_count", nil, 1},
		{"relay_consumer_frames_sent_total", nil, commits + 1},
		{"relay_eventlog_appended_records_total", nil, commits + 1},
		{"relay_admin_actions_total", map[string]string{"action": "add_domain_ban"}, 1},
	}
	for _, m := range moved {
		b, _ := sample(before, m.name, m.labels)
		v, ok := sample(after, m.name, m.labels)
		if !ok {
			t.Errorf("%s%v missing", m.name, m.labels)
			continue
		}
		if v-b < m.min {
			t.Errorf("%s%v moved from %v to %v, want +%v", m.name, m.labels, b, v, m.min)
		}
	}
	// Gauges with their expected values.
	gauges := []struct {
		name   string
		labels map[string]string
		want   func(float64) bool
		desc   string
	}{
		{"relay_consumers", nil, func(v float64) bool { return v == 1 }, "1"},
		{"relay_hosts", map[string]string{"status": "active"}, func(v float64) bool { return v == 1 }, "1"},
		{"relay_hosts", map[string]string{"status": "blocked"}, func(v float64) bool { return v == 0 }, "0"},
		{"relay_hosts_connected", nil, func(v float64) bool { return v == 1 }, "1"},
		{"relay_ring_events", nil, func(v float64) bool { return v == commits+1 }, "4"},
		{"relay_head_seq", nil, func(v float64) bool { return v == commits+1 }, "4"},
		{"relay_eventlog_bytes", nil, func(v float64) bool { return v > 0 }, "> 0"},
		{"relay_sequencer_queue", nil, func(v float64) bool { return v == 0 }, "0"},
	}
	for _, g := range gauges {
		v, ok := sample(after, g.name, g.labels)
		if !ok || !g.want(v) {
			t.Errorf("%s%v = %v (present %v), want %s", g.name, g.labels, v, ok, g.desc)
		}
	}
	// Every relay_ series that counts drops or removals says why.
	for name, f := range after {
		if !strings.HasPrefix(name, "relay_") || !(strings.Contains(name, "dropped") || strings.Contains(name, "removed") || strings.Contains(name, "closed")) {
			continue
		}
		for _, m := range f.GetMetric() {
			has := false
			for _, l := range m.GetLabel() {
				has = has || l.GetName() == "reason"
			}
			if !has {
				t.Errorf("%s has a series without a reason label", name)
			}
		}
	}
	// /_stats on the API port agrees.
	res := apiDo(t, "GET", "http://"+n.r.Addr()+"/_stats", nil, nil)
	if res.status != http.StatusOK || !strings.Contains(string(res.body), `"headSeq":4`) {
		t.Fatalf("/_stats: %d %s", res.status, res.body)
	}
}
