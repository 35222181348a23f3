package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/jackc/pgx/v5"

	"github.com/relay/relay/perf"
)

// eventKey identifies one upstream event in the relay's output: a commit
// or sync by repo and rev, #identity and #account by DID and the upstream
// time the relay copies (and, for #account, the active flag).
func eventKey(ev perf.Event) string {
	switch {
	case ev.Commit != nil:
		return "commit " + ev.Commit.Repo + " " + ev.Commit.Rev
	case ev.Sync != nil:
		return "sync " + ev.Sync.Did + " " + ev.Sync.Rev
	case ev.Identity != nil:
		return "identity " + ev.Identity.Did + " " + ev.Identity.Time
	case ev.Account != nil:
		return fmt.Sprintf("account %s %s %v", ev.Account.Did, ev.Account.Time, ev.Account.Active)
	}
	return ""
}

// crashKills is how many times the crash loop kills the relay.
const crashKills = 10

// seenFrame is one frame a consumer received.
type seenFrame struct {
	seq  int64
	key  string
	hash [32]byte
}

// consume reads message frames from a subscription until it fails,
// appending them under mu.
func consume(rd io.Reader, mu *sync.Mutex, out *[]seenFrame) error {
	for {
		msg, err := wsutil.ReadServerBinary(struct {
			io.Reader
			io.Writer
		}{rd, io.Discard})
		if err != nil {
			return err
		}
		ev, seq, err := perf.DecodeEvent(msg)
		if err != nil {
			continue // #info (OutdatedCursor) and the like
		}
		mu.Lock()
		*out = append(*out, seenFrame{seq: seq, key: eventKey(ev), hash: sha256.Sum256(msg)})
		mu.Unlock()
	}
}

// subscribe connects a consumer to the relay from cursor (-1: live).
func subscribe(t *testing.T, api string, cursor int64, mu *sync.Mutex, out *[]seenFrame) (net.Conn, chan error) {
	t.Helper()
	u := "ws://" + api + "/xrpc/com.atproto.sync.subscribeRepos"
	if cursor >= 0 {
		u += "?cursor=" + strconv.FormatInt(cursor, 10)
	}
	conn, br, _, err := ws.Dial(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	var rd io.Reader = conn
	if br != nil {
		rd = io.MultiReader(br, conn)
	}
	done := make(chan error, 1)
	go func() { done <- consume(rd, mu, out) }()
	return conn, done
}

// crashNet is the synthetic network of the crash test: PDS hosts, their
// accounts, and the record of every event they emitted.
type crashNet struct {
	plc      *perf.PLC
	pdses    []*perf.PDS
	accounts [][]*perf.Account // by PDS

	mu      sync.Mutex
	emitted []string // event keys in emission order
	active  atomic.Int32
}

func newCrashNet(t *testing.T, hosts, perHost int) *crashNet {
	t.Helper()
	plc, err := perf.StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(plc.Close)
	n := &crashNet{plc: plc}
	for h := 0; h < hosts; h++ {
		pds, err := perf.StartPDS(perf.PDSOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pds.Close)
		n.pdses = append(n.pdses, pds)
		var accts []*perf.Account
		for i := 0; i < perHost; i++ {
			a, err := perf.NewAccount(perf.KeyType(i%2), fmt.Sprintf("h%du%d.test", h, i), plc, pds)
			if err != nil {
				t.Fatal(err)
			}
			accts = append(accts, a)
		}
		n.accounts = append(n.accounts, accts)
	}
	return n
}

func (n *crashNet) emit(pds *perf.PDS, ev perf.Event) {
	n.mu.Lock()
	n.emitted = append(n.emitted, eventKey(ev))
	n.mu.Unlock()
	pds.Emit(ev)
}

// run emits events on the first `hosts` PDSes until stop: mostly commits,
// and every so often an #identity, or an #account deactivation followed by
// its reactivation (so every event emitted is valid and must be relayed).
func (n *crashNet) run(t *testing.T, stop *atomic.Bool, done chan<- struct{}) {
	defer close(done)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; !stop.Load(); i++ {
		h := rng.IntN(int(n.active.Load()))
		accts := n.accounts[h]
		a := accts[rng.IntN(len(accts))]
		pds := n.pdses[h]
		switch r := rng.IntN(100); {
		case r < 3:
			n.emit(pds, perf.Event{Identity: a.Identity()})
		case r < 5:
			n.emit(pds, perf.Event{Account: a.AccountEvent(false, "deactivated")})
			time.Sleep(2 * time.Millisecond) // distinct upstream times
			n.emit(pds, perf.Event{Account: a.AccountEvent(true, "")})
		default:
			c, err := a.Commit(1 + rng.IntN(3))
			if err != nil {
				t.Error(err)
				return
			}
			n.emit(pds, perf.Event{Commit: c})
		}
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Microsecond)
	}
}

// TestCrashLoopExactlyOnce kills the relay binary with SIGKILL at random
// points while three hosts stream commits, #identity and #account events
// (a fourth host is added moments before one of the kills), restarting it
// on the same data dir each time. Against the PDS fleet's own record:
// every event is on the firehose exactly once, cursor=0 replays it all
// with the seqs and bytes consumers saw live, and seq strictly increases.
func TestCrashLoopExactlyOnce(t *testing.T) {
	runCrashLoop(t, nil)
}

// TestCrashLoopExactlyOncePostgres is the crash loop with the Postgres
// metadata store.
func TestCrashLoopExactlyOncePostgres(t *testing.T) {
	dsn := os.Getenv("TEST_DATABASE_URL")
	if dsn == "" {
		t.Skip("TEST_DATABASE_URL not set")
	}
	runCrashLoop(t, []string{"DATABASE_URL=" + freshDatabase(t, dsn)})
}

// freshDatabase creates an empty database next to dsn's and returns its URL.
func freshDatabase(t *testing.T, dsn string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("relay_crash_%d", time.Now().UnixNano())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(context.Background())
		}
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

func runCrashLoop(t *testing.T, env []string) {
	if testing.Short() {
		t.Skip("builds and runs the relay binary")
	}
	bin := filepath.Join(t.TempDir(), "relay")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	const kills = crashKills
	n := newCrashNet(t, 4, 4)
	n.active.Store(3)
	dataDir := t.TempDir()

	var (
		mu   sync.Mutex
		live []seenFrame // what consumers received live, across all runs
	)
	env = append(env, "RELAY_LOG_LEVEL=debug")
	var logs []*bytes.Buffer // every run's log, for a failure's diagnosis
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range logs {
				t.Logf("--- relay run %d (drops, recovery, errors) ---", i)
				for _, line := range strings.Split(l.String(), "\n") {
					if strings.Contains(line, "dropped") || strings.Contains(line, "recover") ||
						strings.Contains(line, "ERROR") || strings.Contains(line, "WARN") || strings.Contains(line, "truncat") {
						t.Log(line)
					}
				}
			}
		}
	})
	var stop atomic.Bool
	emitting := make(chan struct{})
	rng := rand.New(rand.NewPCG(3, 4))
	started := false
	for k := 0; k <= kills; k++ {
		p := startRelayProc(t, bin, dataDir, n.plc.URL(), env...)
		logs = append(logs, p.stderr)
		if k == 0 {
			// A first subscription is live: events emitted before it are
			// not the relay's to relay, so emit only once it is there.
			for _, pds := range n.pdses[:3] {
				crawl(t, p.api, pds.Host())
				waitSubscribed(t, pds)
			}
		}
		mu.Lock()
		resume := int64(0)
		if len(live) > 0 {
			resume = live[len(live)-1].seq
		}
		mu.Unlock()
		// The consumer resumes from the last seq it saw, as a real one would.
		conn, readDone := subscribe(t, p.api, resume, &mu, &live)
		if !started {
			started = true
			go n.run(t, &stop, emitting)
		}
		if k == kills {
			stop.Store(true)
			<-emitting
			waitForAll(t, p, n, &mu, &live)
			conn.Close()
			<-readDone
			checkExactlyOnce(t, p, n, &mu, live)
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			_ = p.cmd.Wait()
			return
		}
		wait := time.Duration(150+rng.IntN(1200)) * time.Millisecond
		if k == kills/2 {
			// A host added moments before the kill: its first events are
			// durable when the relay dies; it must resume from them.
			time.Sleep(wait)
			crawl(t, p.api, n.pdses[3].Host())
			waitSubscribed(t, n.pdses[3])
			n.active.Store(4)
			wait = time.Duration(20+rng.IntN(400)) * time.Millisecond
		}
		time.Sleep(wait)
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = p.cmd.Wait()
		conn.Close()
		<-readDone
		if t.Failed() {
			return
		}
	}
}

// waitForAll waits until the live consumer has every emitted event.
func waitForAll(t *testing.T, p *relayProc, n *crashNet, mu *sync.Mutex, live *[]seenFrame) {
	t.Helper()
	n.mu.Lock()
	want := map[string]bool{}
	for _, k := range n.emitted {
		want[k] = true
	}
	n.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		missing := 0
		have := map[string]bool{}
		for _, f := range *live {
			have[f.key] = true
		}
		var example string
		for k := range want {
			if !have[k] {
				missing++
				example = k
			}
		}
		mu.Unlock()
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d emitted events never reached the consumer (e.g. %s); metrics:\n%s", missing, len(want), example, dropMetrics(p))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkExactlyOnce replays the whole log and compares it with what was
// emitted and with what consumers saw live.
func checkExactlyOnce(t *testing.T, p *relayProc, n *crashNet, mu *sync.Mutex, live []seenFrame) {
	t.Helper()
	var replay []seenFrame
	var rmu sync.Mutex
	conn, done := subscribe(t, p.api, 0, &rmu, &replay)
	mu.Lock()
	wantLen := len(live)
	mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rmu.Lock()
		got := len(replay)
		rmu.Unlock()
		if got >= wantLen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replay from cursor 0 gave %d frames, consumers saw %d", got, wantLen)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // anything extra would show up now
	conn.Close()
	<-done
	rmu.Lock()
	defer rmu.Unlock()

	n.mu.Lock()
	emitted := append([]string(nil), n.emitted...)
	n.mu.Unlock()
	count := map[string]int{}
	for i, f := range replay {
		if i > 0 && f.seq <= replay[i-1].seq {
			t.Fatalf("replay: seq %d after %d", f.seq, replay[i-1].seq)
		}
		count[f.key]++
	}
	for _, k := range emitted {
		switch count[k] {
		case 1:
		case 0:
			t.Errorf("lost: %s", k)
		default:
			t.Errorf("relayed %d times: %s", count[k], k)
		}
	}
	if len(replay) != len(emitted) {
		t.Errorf("replay has %d events, the PDS fleet emitted %d", len(replay), len(emitted))
	}
	bySeq := map[int64]seenFrame{}
	for _, f := range replay {
		bySeq[f.seq] = f
	}
	for _, f := range live {
		r, ok := bySeq[f.seq]
		if !ok || r.hash != f.hash {
			t.Errorf("seq %d (%s) seen live is not replayed byte for byte (replayed: %v)", f.seq, f.key, ok)
		}
	}
	// What the consumers saw live, they saw once (their resumes by cursor
	// neither skipped nor repeated).
	seenCount := map[string]int{}
	for _, f := range live {
		seenCount[f.key]++
	}
	for k, c := range seenCount {
		if c != 1 {
			t.Errorf("consumer received %s %d times", k, c)
		}
	}
	if !t.Failed() {
		t.Logf("%d events emitted by %d hosts, each relayed exactly once across %d kills", len(emitted), len(n.pdses), crashKills)
	}
}

// dropMetrics returns the relay's drop counters and host gauges.
func dropMetrics(p *relayProc) string {
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if (strings.HasPrefix(line, "relay_events_dropped_total") && !strings.HasSuffix(line, " 0")) || strings.HasPrefix(line, "relay_hosts") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func waitSubscribed(t *testing.T, pds *perf.PDS) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for pds.Subscribers() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the relay never subscribed to %s", pds.Host())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
