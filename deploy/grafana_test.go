// Package deploy holds the operator files (systemd unit, Grafana board,
// guide); its test checks the Grafana board against a running relay.
package deploy

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relay/relay/perf/inproc"
)

// grafanaPanel is what the test reads of a panel.
type grafanaPanel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

var (
	// metricName finds the series names a PromQL/MetricsQL expression reads.
	metricName = regexp.MustCompile(`\b(?:relay|go|process)_[a-z0-9_]+\b`)
	// byLabels finds "by (a, b)" groupings.
	byLabels = regexp.MustCompile(`by \(([a-z_, ]+)\)`)
)

// scrape reads /metrics over HTTP: series name -> the label names seen.
func scrape(t *testing.T, url string) map[string]map[string]bool {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	out := map[string]map[string]bool{}
	labelKey := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		if end < 0 {
			continue
		}
		name := line[:end]
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		if line[end] == '{' {
			labels := line[end:strings.IndexByte(line, '}')]
			for _, m := range labelKey.FindAllStringSubmatch(labels, -1) {
				out[name][m[1]] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGrafanaBoardMetricsExist runs a relay with load, hosts and
// consumers, scrapes its /metrics, and checks that every series the
// Grafana board queries is exported, with the labels it groups by.
func TestGrafanaBoardMetricsExist(t *testing.T) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	raw, err := os.ReadFile("grafana/relay.json")
	if err != nil {
		t.Fatal(err)
	}
	var board struct {
		Title  string         `json:"title"`
		UID    string         `json:"uid"`
		Panels []grafanaPanel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &board); err != nil {
		t.Fatalf("deploy/grafana/relay.json is not valid JSON: %v", err)
	}
	if board.Title == "" || board.UID == "" || len(board.Panels) < 10 {
		t.Fatalf("board %q uid %q with %d panels", board.Title, board.UID, len(board.Panels))
	}

	live, err := inproc.StartLive(inproc.LiveOptions{Hosts: 2, AccountsPerHost: 2, Consumers: 2, Rate: 50})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Close() })
	r := live.Relay.Relay()
	deadline := time.Now().Add(30 * time.Second)
	for r.Head() < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("relay head %d", r.Head())
		}
		time.Sleep(10 * time.Millisecond)
	}
	series := scrape(t, "http://"+r.MetricsAddr()+"/metrics")

	ids := map[int]bool{}
	queried := map[string]bool{}
	for _, p := range board.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := metricName.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: %q reads no relay_, go_ or process_ series", p.Title, tg.Expr)
			}
			for _, n := range names {
				queried[n] = true
				if series[n] == nil {
					t.Errorf("panel %q queries %s, which /metrics does not export", p.Title, n)
				}
			}
			for _, m := range byLabels.FindAllStringSubmatch(tg.Expr, -1) {
				for _, label := range strings.Split(m[1], ",") {
					label = strings.TrimSpace(label)
					if !slices.ContainsFunc(names, func(n string) bool { return series[n][label] }) {
						t.Errorf("panel %q groups by %q, a label none of %v has", p.Title, label, names)
					}
				}
			}
		}
	}
	// The board covers what the issue asks for.
	for _, n := range []string{
		"relay_events_in_total", "relay_events_out_total", "relay_consumer_frames_sent_total", "relay_events_dropped_total",
		"relay_hosts", "relay_consumers", "relay_consumers_max_lag_events", "relay_eventlog_fsync_seconds_bucket",
		"relay_event_durable_seconds_bucket", "relay_eventlog_bytes", "go_goroutines", "process_resident_memory_bytes",
	} {
		if !queried[n] {
			t.Errorf("the board does not query %s", n)
		}
	}
}
