package perf

import (
	"context"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	rng := rand.New(rand.NewPCG(1, 2))
	samples := make([]time.Duration, 20000)
	for i := range samples {
		// Log-uniform from 10 µs to 10 s.
		samples[i] = time.Duration(10e3 * math.Pow(10, rng.Float64()*6))
		h.Record(samples[i])
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := samples[int(q*float64(len(samples)))-1]
		got := h.Quantile(q)
		if r := float64(got) / float64(want); r < 0.9 || r > 1.1 {
			t.Errorf("q%.2f = %s, exact %s", q, got, want)
		}
	}
	if h.Max() != samples[len(samples)-1] || h.Count() != uint64(len(samples)) {
		t.Fatalf("max %s count %d", h.Max(), h.Count())
	}
	var m Histogram
	m.Merge(&h)
	m.Merge(&h)
	if m.Count() != 2*h.Count() || m.Quantile(0.5) != h.Quantile(0.5) {
		t.Fatal("merge changed the distribution")
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 {
		t.Fatal("empty histogram quantile")
	}
}

func TestProfiles(t *testing.T) {
	if r := Steady(500).Rate(time.Hour); r != 500 {
		t.Fatalf("steady %v", r)
	}
	b := Burst(100, 1000, 4*time.Second)
	if b.Rate(0) != 1000 || b.Rate(999*time.Millisecond) != 1000 || b.Rate(time.Second) != 100 || b.Rate(4*time.Second) != 1000 {
		t.Fatal("burst shape")
	}
	r := Ramp(0, 1000, 10*time.Second)
	if r.Rate(0) != 0 || r.Rate(5*time.Second) != 500 || r.Rate(time.Minute) != 1000 {
		t.Fatal("ramp shape")
	}
}

// TestPregenerateEmitConsume runs the whole synthetic pipeline against the
// fake PDSes themselves (they serve subscribeRepos like a relay): every
// pregenerated commit verifies, arrives in order at every consumer, and
// yields a latency sample.
func TestPregenerateEmitConsume(t *testing.T) {
	n, err := StartNetwork(NetworkOptions{Hosts: 2, AccountsPerHost: 3, P256Fraction: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	p256 := 0
	for _, a := range n.Accounts {
		if a.KeyType() == P256 {
			p256++
		}
	}
	if len(n.Accounts) != 6 || p256 != 3 {
		t.Fatalf("%d accounts, %d P-256", len(n.Accounts), p256)
	}

	const events = 300
	pre, err := n.Pregenerate(PregenOptions{Events: events, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	onHost0 := 0
	seqs := map[*PDS]int64{}
	for _, f := range pre.Frames {
		if f.Seq != seqs[f.PDS]+1 {
			t.Fatalf("host seqs not consecutive: %d after %d", f.Seq, seqs[f.PDS])
		}
		seqs[f.PDS] = f.Seq
		if f.PDS == n.Hosts[0] {
			onHost0++
		}
		ev, seq, err := DecodeEvent(f.Frame)
		if err != nil || seq != f.Seq || ev.Commit.Repo != f.DID {
			t.Fatalf("frame decodes to seq %d did %s: %v", seq, ev.DID(), err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	fleet, err := StartFleet(ctx, FleetOptions{
		URL:          subURL(n.Hosts[0], -1),
		Consumers:    4,
		Cursor:       -1,
		SlowFraction: 0.25,
		SlowDelay:    time.Millisecond,
		Table:        pre.Table,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	waitFor(t, "fleet subscribed", func() bool { return n.Hosts[0].Subscribers() == 4 })

	em := NewEmitter(pre, Steady(3000))
	st := em.Run(ctx, 0)
	if !st.Finished || st.Emitted != events || st.Errors != 0 {
		t.Fatalf("emitter: %+v", st)
	}
	var sum int64
	for _, c := range st.PerSec {
		sum += c
	}
	if sum != events {
		t.Fatalf("per-second counts sum to %d", sum)
	}
	if err := fleet.Wait(ctx, func(s FleetStats) bool { return s.Commits == int64(4*onHost0) }); err != nil {
		t.Fatalf("fleet did not receive everything: %+v", fleet.Stats())
	}
	fs := fleet.Stats()
	if fs.Gaps != 0 || fs.Duplicates != 0 || fs.ScanErrors != 0 || fs.Slow != 1 {
		t.Fatalf("fleet stats %+v", fs)
	}
	if fs.MinLastSeq != seqs[n.Hosts[0]] || fs.MinCommits != int64(onHost0) {
		t.Fatalf("consumers stopped at seq %d (%d commits), host at %d", fs.MinLastSeq, fs.MinCommits, seqs[n.Hosts[0]])
	}
	if fs.Latency.Count != uint64(3*onHost0) || fs.SlowLatency.Count != uint64(onHost0) {
		t.Fatalf("latency samples %d fast %d slow", fs.Latency.Count, fs.SlowLatency.Count)
	}
	tl := fleet.Timeline()
	var got float64
	for _, s := range tl {
		got += s.Received
	}
	if len(tl) == 0 || int(got+0.5) != onHost0 {
		t.Fatalf("timeline %+v", tl)
	}

	// The accounts carry on after the timed phase: a direct Emit follows
	// the reserved seqs.
	c, err := n.Accounts[0].Commit(1)
	if err != nil {
		t.Fatal(err)
	}
	if seq := n.Accounts[0].PDS().Emit(Event{Commit: c}); seq != seqs[n.Accounts[0].PDS()]+1 {
		t.Fatalf("seq after pregen %d", seq)
	}
}

func TestFleetFutureCursor(t *testing.T) {
	env := newTestEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	fleet, err := StartFleet(ctx, FleetOptions{URL: subURL(env.pds, -1), Consumers: 3, Cursor: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	if err := fleet.Wait(ctx, func(s FleetStats) bool { return s.Ended == 3 }); err != nil {
		t.Fatalf("consumers did not end: %+v", fleet.Stats())
	}
	fs := fleet.Stats()
	if fs.FutureCursor != 3 || fs.ErrorFrames != 3 || len(fs.Errors) != 3 {
		t.Fatalf("stats %+v", fs)
	}
}

func TestFleetDetectsGaps(t *testing.T) {
	env := newTestEnv(t)
	a, err := NewAccount(K256, "gap.test", env.plc, env.pds)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	fleet, err := StartFleet(ctx, FleetOptions{URL: subURL(env.pds, -1), Consumers: 2, Cursor: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	waitFor(t, "subscribed", func() bool { return env.pds.Subscribers() == 2 })
	c, err := a.Commit(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []int64{1, 2, 5, 6} {
		f, err := EncodeEvent(Event{Commit: c}, seq)
		if err != nil {
			t.Fatal(err)
		}
		if err := env.pds.EmitFrame(seq, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := fleet.Wait(ctx, func(s FleetStats) bool { return s.Commits == 8 }); err != nil {
		t.Fatal(err)
	}
	fs := fleet.Stats()
	if fs.Gaps != 2 || fs.Missing != 4 || fs.Duplicates != 0 {
		t.Fatalf("gaps %d missing %d dups %d", fs.Gaps, fs.Missing, fs.Duplicates)
	}
}
