package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

// smokeTimeout bounds the smoke run in the test (it takes a few seconds).
const smokeTimeout = 2 * time.Minute

// TestSmoke is what CI runs: a few seconds against the in-process relay,
// with every fault kind and host disconnects; it must deliver every valid
// event to every fast consumer with no gap or duplicate, drop every fault,
// replay from cursor 0, and write the report.
func TestSmoke(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "report")
	ctx, cancel := context.WithTimeout(context.Background(), smokeTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"-smoke", "-quiet", "-out", dir}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "smoke: ok") {
		t.Fatalf("no smoke verdict:\n%s", stdout.String())
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| smoke | relay (in-process) | steady 400/s | 3 x 4 | 8 (2) |", "fault events delivered: 0", "replay from cursor 0"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestSmokeCheckFindsProblems(t *testing.T) {
	dir := t.TempDir()
	res := &perf.Result{Emit: perf.EmitStats{Emitted: 10}, Delivered: 9}
	res.Fleet.Gaps, res.Fleet.Missing, res.Fleet.Duplicates, res.Fleet.FaultsDelivered = 1, 1, 2, 3
	got := strings.Join(smokeCheck(res, dir), "\n")
	for _, want := range []string{"1 gaps", "2 duplicates", "all 10 events, the fewest was 9", "3 fault events", "replay", "results.json", "report.md", "SVG"} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q:\n%s", want, got)
		}
	}
	// A clean result with its report written passes.
	ok := &perf.Result{Scenario: "s", Target: "t", Emit: perf.EmitStats{Emitted: 5}, Delivered: 5,
		Replay: &perf.ReplayStats{Complete: true}}
	if err := perf.WriteReport(dir, []*perf.Result{ok}); err != nil {
		t.Fatal(err)
	}
	if p := smokeCheck(ok, dir); len(p) != 0 {
		t.Fatalf("clean result: %v", p)
	}
}

func TestFlags(t *testing.T) {
	var errs bytes.Buffer
	o, err := parseFlags(nil, &errs)
	if err != nil {
		t.Fatal(err)
	}
	if o.hosts != demoHosts || o.accounts != demoAccounts || o.rate != demoRate || o.consumers != demoConsumers || o.duration != demoDuration || o.external() {
		t.Fatalf("demo defaults %+v", o)
	}
	p, _ := o.loadProfile()
	if n := eventsFor(p, o.duration); n != demoRate*int(demoDuration/time.Second) {
		t.Fatalf("demo events %d", n)
	}
	if n := eventsFor(perf.Ramp(0, 1000, 10*time.Second), 10*time.Second); n < 4990 || n > 5010 {
		t.Fatalf("ramp events %d", n)
	}

	// -smoke replaces the defaults, not what is given explicitly.
	o, err = parseFlags([]string{"-smoke", "-hosts", "5"}, &errs)
	if err != nil {
		t.Fatal(err)
	}
	if o.hosts != 5 || o.accounts != 4 || o.faults.BadSignature != 0.02 || o.cpuProfile || !o.replay {
		t.Fatalf("smoke options %+v", o)
	}

	for _, bad := range [][]string{
		{"-target-crawl", "http://127.0.0.1:1/x"},
		{"-target-crawl", "http://x/y", "-target-firehose", "ws://x/y", "-workers", "2"},
		{"-profile", "sawtooth"},
		{"-slow", "1.5"},
		{"-rate", "0"},
		{"-smoke", "-idle"},
		{"extra"},
	} {
		if _, err := parseFlags(bad, &errs); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if o, err := parseFlags([]string{"-idle", "-accounts", "0", "-consumers", "0"}, &errs); err != nil || !o.idle {
		t.Fatalf("idle without accounts or consumers: %v", err)
	}
}
