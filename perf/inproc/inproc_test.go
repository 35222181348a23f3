package inproc

import (
	"context"
	"os"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

// TestStartLabelsAndClose checks the relay's goroutines carry side=relay,
// the caller keeps its own label after Start, the target observes the
// relay, and Close removes the temporary data directory.
func TestStartLabelsAndClose(t *testing.T) {
	plc, err := perf.StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	defer plc.Close()
	var ir *Relay
	stop := make(chan struct{})
	defer close(stop)
	pprof.Do(context.Background(), pprof.Labels(LabelKey, LabelHarness), func(ctx context.Context) {
		ir, err = Start(ctx, Options{PLCURL: plc.URL()})
		if err != nil {
			return
		}
		// Started after the relay: must still be the harness's.
		go func() { <-stop }()
	})
	if err != nil {
		t.Fatal(err)
	}
	by, err := perf.GoroutinesByLabel(LabelKey)
	if err != nil {
		t.Fatal(err)
	}
	if by[LabelRelay] < 2 || by[LabelHarness] != 1 {
		t.Fatalf("goroutines by side %v", by)
	}
	tgt := ir.Target()
	obs := tgt.Observe()
	if obs["goroutines_relay"] < 2 {
		t.Fatalf("observed %v", obs)
	}
	if _, ok := obs[perf.ObsHeadSeq]; !ok {
		t.Fatalf("relay metrics not observed: %v", obs)
	}
	fl, err := perf.StartFleet(context.Background(), perf.FleetOptions{URL: tgt.FirehoseURL, Consumers: 2, Cursor: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	deadline := time.Now().Add(10 * time.Second)
	for tgt.Observe()[perf.ObsConsumers] != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("relay does not count 2 consumers: %v", tgt.Observe())
		}
		time.Sleep(10 * time.Millisecond)
	}
	dir := ir.DataDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ir.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("data dir left behind: %v", err)
	}
}
