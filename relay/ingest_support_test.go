package relay

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/bluesky-social/indigo/events"
	"github.com/gobwas/ws/wsutil"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/wsframe"
)

// startRelayHooked is startRelay with a hook run between New and Start,
// for tests that set HostManager seams (TLS roots, dialers, backoff).
func startRelayHooked(t testing.TB, cfg Config, hook func(*Relay)) *Relay {
	t.Helper()
	r, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if hook != nil {
		hook(r)
	}
	if err := r.Start(testHandlers(r)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = r.Close(ctx)
	})
	return r
}

// event is a firehose message with the fields the ingest tests compare.
type event struct {
	t      string
	seq    int64
	did    string
	rev    string // #commit and #sync
	handle string // #identity, "" when absent
	active bool   // #account
	status string // #account, "" when absent
}

func (e event) String() string {
	return fmt.Sprintf("%s seq=%d did=%s rev=%s handle=%q active=%v status=%q", e.t, e.seq, e.did, e.rev, e.handle, e.active, e.status)
}

// nextEvent reads one message frame and decodes it; error frames and
// #info are returned as errors.
func (c *testConsumer) nextEvent(timeout time.Duration) (event, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	msg, err := wsutil.ReadServerBinary(c.rd)
	if err != nil {
		return event{}, err
	}
	return decodeEvent(msg)
}

func decodeEvent(msg []byte) (event, error) {
	op, t, body, err := wsframe.ParseEventHeader(msg)
	if err != nil {
		return event{}, err
	}
	r := bytes.NewReader(body)
	if op != 1 {
		var ef events.ErrorFrame
		_ = ef.UnmarshalCBOR(r)
		return event{}, fmt.Errorf("error frame %q: %s", ef.Error, ef.Message)
	}
	e := event{t: t}
	switch t {
	case "#commit":
		var ev comatproto.SyncSubscribeRepos_Commit
		err = ev.UnmarshalCBOR(r)
		e.seq, e.did, e.rev = ev.Seq, ev.Repo, ev.Rev
	case "#sync":
		var ev comatproto.SyncSubscribeRepos_Sync
		err = ev.UnmarshalCBOR(r)
		e.seq, e.did, e.rev = ev.Seq, ev.Did, ev.Rev
	case "#identity":
		var ev comatproto.SyncSubscribeRepos_Identity
		err = ev.UnmarshalCBOR(r)
		e.seq, e.did = ev.Seq, ev.Did
		if ev.Handle != nil {
			e.handle = *ev.Handle
		}
	case "#account":
		var ev comatproto.SyncSubscribeRepos_Account
		err = ev.UnmarshalCBOR(r)
		e.seq, e.did, e.active = ev.Seq, ev.Did, ev.Active
		if ev.Status != nil {
			e.status = *ev.Status
		}
	default:
		return e, fmt.Errorf("unexpected message type %q", t)
	}
	return e, err
}

// collectEvents reads n message frames, failing the test on a timeout.
func collectEvents(t *testing.T, c *testConsumer, n int, timeout time.Duration) []event {
	t.Helper()
	out := make([]event, 0, n)
	deadline := time.Now().Add(timeout)
	for len(out) < n {
		e, err := c.nextEvent(time.Until(deadline))
		if err != nil {
			t.Fatalf("after %d of %d events %v: %v", len(out), n, out, err)
		}
		out = append(out, e)
	}
	return out
}

// expectNoEvent checks that nothing arrives for d.
func expectNoEvent(t *testing.T, c *testConsumer, d time.Duration) {
	t.Helper()
	if e, err := c.nextEvent(d); err == nil {
		t.Fatalf("unexpected event %v", e)
	}
}

// waitUntil polls cond until it holds or timeout passes.
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// emitCommit builds the account's next commit and emits it on pds.
func emitCommit(t testing.TB, a *perf.Account, pds *perf.PDS, ops int) string {
	t.Helper()
	c, err := a.Commit(ops)
	if err != nil {
		t.Fatal(err)
	}
	pds.Emit(perf.Event{Commit: c})
	return c.Rev
}

// hostRecord reads a host's stored record by hostname.
func hostRecord(t testing.TB, r *Relay, hostname string) *HostInfo {
	t.Helper()
	h := r.hosts.byHostname(hostname)
	if h == nil {
		t.Fatalf("host %s is not tracked", hostname)
	}
	info := h.info()
	return &info
}

// startTestNetHooked is startTestNet with a hook run on the relay between
// New and Start (before any host is dialed, so without data races).
func startTestNetHooked(t *testing.T, hosts int, mutate func(*Config), hook func(*Relay)) *testNet {
	t.Helper()
	plc, err := perf.StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(plc.Close)
	n := &testNet{plc: plc}
	for i := 0; i < hosts; i++ {
		p, err := perf.StartPDS(perf.PDSOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		n.hosts = append(n.hosts, p)
	}
	cfg := testConfig(t)
	cfg.PLCHost = plc.URL()
	if mutate != nil {
		mutate(&cfg)
	}
	n.r = startRelayHooked(t, cfg, hook)
	t.Cleanup(func() {
		if t.Failed() {
			n.dump(t)
		}
	})
	return n
}

// fastRedial makes the relay redial hosts after 5 ms instead of seconds.
func fastRedial(r *Relay) {
	r.hosts.backoff = func(int) time.Duration { return 5 * time.Millisecond }
}
