package perf

import (
	"bytes"
	"context"
	"testing"

	"github.com/bluesky-social/indigo/atproto/identity"
	"github.com/bluesky-social/indigo/atproto/repo"
)

// TestPregenerateFaults checks a batch with every fault kind: each fault
// is what it claims to be, valid events are unaffected, the emitter counts
// faults apart from valid events, and a consumer of a target that
// validates nothing (the PDS itself) reports the faults it received.
func TestPregenerateFaults(t *testing.T) {
	n, err := StartNetwork(NetworkOptions{Hosts: 3, AccountsPerHost: 20})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// One commit per account first, as the harness's warmup does, so that
	// stale-rev faults have a rev to go back from.
	lastRev := map[string]string{}
	accountOf := map[string]*Account{}
	for _, a := range n.Accounts {
		c, err := a.Commit(1)
		if err != nil {
			t.Fatal(err)
		}
		a.PDS().Emit(Event{Commit: c})
		lastRev[a.DID], accountOf[a.DID] = c.Rev, a
	}
	const events = 400
	faults := FaultOptions{BadSignature: 0.1, WrongHost: 0.1, StaleRev: 0.1, Garbage: 0.1}
	pre, err := n.Pregenerate(PregenOptions{Events: events, Seed: 11, Faults: faults})
	if err != nil {
		t.Fatal(err)
	}
	if len(pre.Hosts) != 3 {
		t.Fatalf("%d hosts", len(pre.Hosts))
	}
	ctx := context.Background()
	dir := &identity.BaseDirectory{PLCURL: n.PLC.URL(), SkipHandleVerification: true}
	kinds := map[FaultKind]int{}
	victims := map[string]bool{}
	for i := range pre.Frames {
		f := &pre.Frames[i]
		kinds[f.Fault]++
		if f.Fault == FaultGarbage {
			if f.Seq != 0 || !bytes.Equal(f.Frame, GarbageFrame()) || f.DID != "" {
				t.Fatalf("garbage frame %+v", f)
			}
			continue
		}
		ev, seq, err := DecodeEvent(f.Frame)
		if err != nil || seq != f.Seq || ev.Commit == nil || ev.Commit.Repo != f.DID || ev.Commit.Rev != f.Rev {
			t.Fatalf("frame %d does not decode to its commit: %v", i, err)
		}
		a := accountOf[f.DID]
		sigErr := repo.VerifyCommitSignature(ctx, dir, ev.Commit)
		switch f.Fault {
		case FaultBadSignature:
			if sigErr == nil {
				t.Fatal("bad-signature fault verifies")
			}
		case FaultWrongHost:
			victims[f.DID] = true
			if f.PDS == a.PDS() || sigErr != nil {
				t.Fatalf("wrong-host fault on its own host or badly signed: %v", sigErr)
			}
		case FaultStaleRev:
			if f.Rev >= lastRev[f.DID] || sigErr != nil {
				t.Fatalf("stale rev %s after %s (%v)", f.Rev, lastRev[f.DID], sigErr)
			}
		case FaultNone:
			if f.PDS != a.PDS() || sigErr != nil || f.Rev <= lastRev[f.DID] {
				t.Fatalf("valid event: host %v, rev %s after %s, %v", f.PDS == a.PDS(), f.Rev, lastRev[f.DID], sigErr)
			}
			lastRev[f.DID] = f.Rev
		}
	}
	for k, c := range kinds {
		if k != FaultNone && (c < events/20 || c > events/5) {
			t.Errorf("%d %q faults of %d events", c, k, events)
		}
	}
	if pre.Valid != kinds[FaultNone] {
		t.Fatalf("Valid %d, counted %d", pre.Valid, kinds[FaultNone])
	}
	for i := range pre.Frames {
		f := &pre.Frames[i]
		if f.Fault == FaultNone && victims[f.DID] {
			t.Fatal("an account set aside for wrong-host faults sent a valid event")
		}
	}

	// Every host serves its frames unvalidated: a consumer of each sees the
	// faults, minus garbage (not an event).
	var fleets []*Fleet
	for _, h := range n.Hosts {
		fl, err := StartFleet(ctx, FleetOptions{URL: subURL(h, -1), Consumers: 1, Cursor: -1, Table: pre.Table})
		if err != nil {
			t.Fatal(err)
		}
		defer fl.Close()
		fleets = append(fleets, fl)
	}
	waitFor(t, "subscribed", func() bool {
		for _, h := range n.Hosts {
			if h.Subscribers() != 1 {
				return false
			}
		}
		return true
	})
	st := NewEmitter(pre, Steady(5000)).Run(ctx, 0)
	if !st.Finished || st.Emitted != int64(pre.Valid) || st.Errors != 0 {
		t.Fatalf("emit %+v", st)
	}
	for _, k := range []FaultKind{FaultBadSignature, FaultWrongHost, FaultStaleRev, FaultGarbage} {
		if st.Faults[k] != int64(kinds[k]) {
			t.Fatalf("emitted %d %s faults, pregenerated %d", st.Faults[k], k, kinds[k])
		}
	}
	wantFaults := int64(kinds[FaultBadSignature] + kinds[FaultWrongHost] + kinds[FaultStaleRev])
	var gotFaults, gotCommits, gotScanErrors int64
	waitFor(t, "everything received", func() bool {
		gotFaults, gotCommits, gotScanErrors = 0, 0, 0
		for _, fl := range fleets {
			s := fl.Stats()
			gotFaults += s.FaultsDelivered
			gotCommits += s.Commits
			gotScanErrors += s.ScanErrors
		}
		return gotFaults == wantFaults && gotCommits == int64(pre.Valid)
	})
	if gotScanErrors != int64(kinds[FaultGarbage]) {
		t.Fatalf("%d garbage frames seen, %d sent", gotScanErrors, kinds[FaultGarbage])
	}
}

func TestFaultOptionsValidate(t *testing.T) {
	for _, f := range []FaultOptions{{BadSignature: -0.1}, {Garbage: 1.5}, {StaleRev: 0.6, WrongHost: 0.6}, {Disconnects: -1}} {
		if _, err := Pregenerate(PregenOptions{Accounts: []*Account{{}}, Events: 1, Faults: f}); err != ErrFaultOptions {
			t.Errorf("%+v: %v", f, err)
		}
	}
	f := FaultOptions{BadSignature: 0.25, StaleRev: 0.25}
	if f.draw(0.1) != FaultBadSignature || f.draw(0.3) != FaultStaleRev || f.draw(0.6) != FaultNone {
		t.Fatal("draw")
	}
}
