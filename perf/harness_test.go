package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// naiveRelay is a deliberately simple relay used to exercise the harness
// end to end: requestCrawl subscribes to the host with FirehoseClient, and
// every decodable event is re-sequenced onto its own output stream (a PDS
// log, which serves subscribeRepos with cursors). It validates nothing.
type naiveRelay struct {
	out *PDS
	mu  sync.Mutex
	ups []*FirehoseClient
	// drop, when set, discards events whose (did, rev) it returns true for.
	drop func(ev Event) bool
}

func startNaiveRelay(t *testing.T) *naiveRelay {
	t.Helper()
	r := &naiveRelay{}
	out, err := StartPDS(PDSOptions{Routes: map[string]http.HandlerFunc{
		"POST /xrpc/com.atproto.sync.requestCrawl": r.requestCrawl,
	}})
	if err != nil {
		t.Fatal(err)
	}
	r.out = out
	t.Cleanup(func() {
		out.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, u := range r.ups {
			_ = u.Close()
		}
	})
	return r
}

func (r *naiveRelay) target() Target {
	return Target{
		Name:            "naive",
		RequestCrawlURL: r.out.URL() + "/xrpc/com.atproto.sync.requestCrawl",
		FirehoseURL:     subURL(r.out, -1),
	}
}

func (r *naiveRelay) requestCrawl(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Hostname string `json:"hostname"`
	}
	if err := json.NewDecoder(req.Body).Decode(&body); err != nil || body.Hostname == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "InvalidRequest"})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	up, err := DialFirehose(ctx, "ws://"+body.Hostname+"/xrpc/com.atproto.sync.subscribeRepos", DialOptions{})
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "HostNotFound"})
		return
	}
	r.mu.Lock()
	r.ups = append(r.ups, up)
	r.mu.Unlock()
	go func() {
		for {
			_, p, err := up.Next()
			if err != nil {
				return
			}
			ev, _, err := DecodeEvent(p)
			if err != nil || (r.drop != nil && r.drop(ev)) {
				continue
			}
			r.out.Emit(ev)
		}
	}()
	writeJSON(w, http.StatusOK, map[string]string{})
}

func TestHarnessRunAndReport(t *testing.T) {
	relay := startNaiveRelay(t)
	tgt := relay.target()
	observed := 0
	tgt.Observe = func() map[string]float64 {
		observed++
		return map[string]float64{"subscribers": float64(relay.out.Subscribers())}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, tgt, Scenario{
		Name:         "smoke",
		Network:      NetworkOptions{Hosts: 3, AccountsPerHost: 2, P256Fraction: 0.3},
		Events:       600,
		Profile:      Steady(1500),
		Consumers:    5,
		SlowFraction: 0.2,
		SlowDelay:    time.Millisecond,
		Drain:        5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Emit.Emitted != 600 || !res.Emit.Finished {
		t.Fatalf("emit %+v", res.Emit)
	}
	if res.Delivered != 600 || res.DeliveredRatio != 1 || res.Fleet.Gaps != 0 || res.Fleet.Duplicates != 0 {
		t.Fatalf("delivery: %d (%.3f), fleet %+v, notes %v", res.Delivered, res.DeliveredRatio, res.Fleet, res.Notes)
	}
	if res.Fleet.Latency.Count != 4*600 || res.Fleet.Latency.P50 <= 0 || res.Throughput <= 0 {
		t.Fatalf("latency %+v throughput %.0f", res.Fleet.Latency, res.Throughput)
	}
	if res.Hosts != 3 || res.Accounts != 6 || res.PregenEvents != 600 || res.PregenBytes == 0 || len(res.Notes) != 0 {
		t.Fatalf("result %+v", res)
	}
	if len(res.Observed) == 0 || observed != len(res.Observed) {
		t.Fatalf("observed %d samples, recorded %d", observed, len(res.Observed))
	}

	dir := t.TempDir()
	if err := WriteReport(dir, []*Result{res}); err != nil {
		t.Fatal(err)
	}
	var back []*Result
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &back); err != nil || len(back) != 1 || back[0].Delivered != 600 {
		t.Fatalf("results.json round trip: %v", err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| smoke | naive | steady 1500/s | 3 x 2 | 5 (1) | 600 | 600 | 1.0000 |") {
		t.Fatalf("markdown:\n%s", md)
	}
	for _, name := range []string{"smoke-naive-throughput.svg", "smoke-naive-latency.svg"} {
		svg, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(svg, []byte("<svg ")) || bytes.Count(svg, []byte("<polyline")) != 2 {
			t.Fatalf("%s is not a two-line chart:\n%s", name, svg)
		}
		if !strings.Contains(string(md), "]("+name+")") {
			t.Fatalf("report does not link %s", name)
		}
	}
}

// TestHarnessReportsLoss checks the harness notices a target that drops
// events: delivered and ratio fall short and the drain gives up.
func TestHarnessReportsLoss(t *testing.T) {
	relay := startNaiveRelay(t)
	var mu sync.Mutex
	seen := 0
	relay.drop = func(ev Event) bool {
		mu.Lock()
		defer mu.Unlock()
		seen++
		// Let the 2 warmup commits through, then drop every tenth event.
		return seen > 2 && seen%10 == 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, relay.target(), Scenario{
		Name:      "lossy",
		Network:   NetworkOptions{Hosts: 1, AccountsPerHost: 2},
		Events:    100,
		Profile:   Steady(2000),
		Consumers: 2,
		Drain:     300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Delivered != 90 || res.DeliveredRatio != 0.9 {
		t.Fatalf("delivered %d (%.2f)", res.Delivered, res.DeliveredRatio)
	}
	if len(res.Notes) != 1 || !strings.HasPrefix(res.Notes[0], "drain: no progress") {
		t.Fatalf("notes %v", res.Notes)
	}
	// The naive relay re-sequences, so dropped events leave no seq gaps.
	if res.Fleet.Gaps != 0 {
		t.Fatalf("gaps %d", res.Fleet.Gaps)
	}
}

func TestCrawlRefused(t *testing.T) {
	out, err := StartPDS(PDSOptions{Routes: map[string]http.HandlerFunc{
		"POST /xrpc/com.atproto.sync.requestCrawl": func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "Forbidden"})
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	host, err := StartPDS(PDSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	err = CrawlAll(context.Background(), out.URL()+"/xrpc/com.atproto.sync.requestCrawl", []*PDS{host})
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("refused crawl: %v", err)
	}
	if err := WaitSubscribed(context.Background(), []*PDS{host}, 50*time.Millisecond); err == nil {
		t.Fatal("WaitSubscribed succeeded with no subscriber")
	}
}

func TestNiceCeilAndSlug(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, 0.7: 1, 1: 1, 1.2: 2, 2.2: 2.5, 3: 5, 7: 10, 730: 1000, 1500: 2000} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", in, got, want)
		}
	}
	if got := slug("Steady 3000/s — relay!"); got != "steady-3000-s-relay" {
		t.Errorf("slug %q", got)
	}
}
